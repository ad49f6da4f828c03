"""Flask's tests/test_config.py run with Flask and Config replaced by capa_compat.flask."""
