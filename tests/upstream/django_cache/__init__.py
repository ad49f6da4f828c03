"""Django's cache test suite (tests/cache in its sdist) run against CapaCache."""
