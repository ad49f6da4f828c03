"""Run Django's own cache tests against CapaCache on one capa state backend.

    python -m tests.upstream.django_cache.run memory|sqlite|redis [--json FILE] [-v 2]

What runs, all from the sdist of the installed Django (tests/cache/tests.py and
tests/template_tests/syntax_tests/test_cache.py):
- ``BaseCacheTests``, the contract every Django cache backend passes, as
  ``CapaCacheTests(BaseCacheTests, TestCase)`` with every alias of Django's test settings on
  CapaCache and one LOCATION (the store of the chosen backend), exactly as Django runs it for
  LocMemCache and RedisCache.
- The template fragment cache tag tests, with the default cache on CapaCache.
- With ``--framework`` (the memory run): the tests of the cache middleware, ``cache_page``,
  ``cache_control``, the cache utilities, template responses and the cache handler. They declare
  LocMemCache in their settings; ``capa_compat.django.cache.install()`` serves those entries by
  CapaCache, as it does for an application that keeps its legacy CACHES.
Classes testing another backend's internals (LocMemCache's ``_expire_info``, the database and
file backends, memcached, redis-py) are not run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import unittest
import uuid
from pathlib import Path
from typing import Any

from tests.upstream.sdist import source_tree

BACKEND = "capa_compat.django.cache.CapaCache"

# The framework classes of cache/tests.py run on CapaCache through install().
FRAMEWORK_CLASSES = (
    "CacheUtils",
    "PrefixedCacheUtils",
    "CacheHEADTest",
    "CacheI18nTest",
    "PrefixedCacheI18nTest",
    "CacheMiddlewareTest",
    "TestWithTemplateResponse",
    "TestMakeTemplateFragmentKey",
    "CacheHandlerTest",
)


def location_for(backend: str, scratch: Path) -> str:
    if backend == "memory":
        return f"memory://django-upstream-{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        return f"sqlite:///{scratch / 'django-cache.sqlite3'}"
    if backend == "redis":
        return os.environ.get("CAPA_DJANGO_REDIS_URL", "redis://127.0.0.1:6379/2")
    raise SystemExit(f"unknown backend {backend!r}: use memory, sqlite or redis")


def configure(tests_dir: Path, location: str, component: dict[str, Any]) -> None:
    import django
    from django.conf import settings

    sys.path.insert(0, str(tests_dir))
    settings.configure(
        DEBUG=False,
        SECRET_KEY="capa-upstream-django-cache",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3"}},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "cache",
        ],
        MIGRATION_MODULES={"auth": None, "contenttypes": None, "sessions": None},
        CACHES={
            "default": {
                "BACKEND": BACKEND,
                "LOCATION": location,
                "OPTIONS": {"COMPONENT": component},
            }
        },
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [str(tests_dir / "templates")],
                "APP_DIRS": True,
            }
        ],
        ROOT_URLCONF=None,
        USE_TZ=False,
        LANGUAGE_CODE="en",
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    )
    django.setup()


def capa_caches(location: str, component: dict[str, Any]) -> dict[str, Any]:
    """Django's test CACHES (caches_setting_for_tests), every alias on CapaCache at ``location``.

    The run's key prefix is merged into each alias's OPTIONS, keeping the aliases' own options
    (the culling ones); it keeps concurrent runs on one Redis apart.
    """
    from cache.tests import caches_setting_for_tests  # type: ignore[import-not-found]

    setting: dict[str, Any] = caches_setting_for_tests(BACKEND=BACKEND, LOCATION=location)
    for params in setting.values():
        params["OPTIONS"] = {**params.get("OPTIONS", {}), "COMPONENT": component}
    return setting


def build_suite(location: str, component: dict[str, Any], framework: bool) -> unittest.TestSuite:
    from cache import tests as cache_tests  # type: ignore[import-not-found]
    from django.test import TestCase, override_settings
    from template_tests.syntax_tests import test_cache as tag_tests  # type: ignore[import-not-found]

    @override_settings(CACHES=capa_caches(location, component))
    class CapaCacheTests(cache_tests.BaseCacheTests, TestCase):  # type: ignore[misc]
        """Django's backend contract on CapaCache; all aliases share one LOCATION."""

    CapaCacheTests.__module__ = cache_tests.__name__
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    suite.addTests(loader.loadTestsFromTestCase(CapaCacheTests))
    suite.addTests(loader.loadTestsFromTestCase(tag_tests.CacheTagTests))
    suite.addTests(loader.loadTestsFromTestCase(tag_tests.CacheTests))
    if framework:
        for name in FRAMEWORK_CLASSES:
            suite.addTests(loader.loadTestsFromTestCase(getattr(cache_tests, name)))
    return suite


def check_backends(framework: bool) -> None:
    """Fail loudly unless the caches under test really are CapaCache."""
    from django.core.cache import CacheHandler, caches

    from capa_compat.django.cache import CapaCache

    if not isinstance(caches["default"], CapaCache):
        raise SystemExit(f"the default cache is {type(caches['default'])}, not CapaCache")
    if framework:
        legacy = CacheHandler(
            {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
        )["default"]
        if not isinstance(legacy, CapaCache):
            raise SystemExit(f"install() did not route LocMemCache to CapaCache: {legacy}")


def _name(test: Any) -> str:
    return test.id() if hasattr(test, "id") else str(test)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("backend", choices=["memory", "sqlite", "redis"])
    parser.add_argument("--framework", action="store_true",
                        help="also run the middleware/cache_page/handler tests (via install())")
    parser.add_argument("--json", help="write the outcome here")
    parser.add_argument("-v", "--verbosity", type=int, default=1)
    args = parser.parse_args(argv)

    tests_dir = source_tree("django") / "tests"
    with tempfile.TemporaryDirectory(prefix="capa-django-cache-") as scratch:
        location = location_for(args.backend, Path(scratch))
        run_id = uuid.uuid4().hex[:10]
        component = {"key_prefix": f"django-upstream-{run_id}"}
        configure(tests_dir, location, component)

        from django.test.runner import DiscoverRunner

        from capa_compat.django import cache as capa_cache
        from capa_compat.django.backend import runtime_for_url

        if args.framework:
            capa_cache.install()
        check_backends(args.framework)
        suite = build_suite(location, component, args.framework)
        runner = DiscoverRunner(verbosity=args.verbosity, interactive=False)
        runner.setup_test_environment()
        databases = runner.setup_databases()
        try:
            result = runner.run_suite(suite)
        finally:
            runner.teardown_databases(databases)
            runner.teardown_test_environment()
            # Leave nothing behind in a shared store.
            runtime_for_url(location, component).state("cache").delete_prefix("")
    outcome = {
        "backend": args.backend,
        "location": location,
        "run": result.testsRun,
        "failures": [_name(t) for t, _ in result.failures],
        "errors": [_name(t) for t, _ in result.errors],
        "skipped": [[_name(t), reason] for t, reason in result.skipped],
        "expected_failures": [_name(t) for t, _ in result.expectedFailures],
        "unexpected_successes": [_name(t) for t in result.unexpectedSuccesses],
    }
    if args.json:
        Path(args.json).write_text(json.dumps(outcome, indent=2))
    print(
        f"django cache upstream [{args.backend}]: {outcome['run']} run, "
        f"{len(outcome['failures'])} failures, {len(outcome['errors'])} errors, "
        f"{len(outcome['skipped'])} skipped"
    )
    return 0 if result.wasSuccessful() and not outcome["skipped"] else 1


if __name__ == "__main__":
    sys.exit(main())
