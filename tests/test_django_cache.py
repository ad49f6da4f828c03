"""CapaCache and capa_compat.django.cache: Django's cache semantics on capa state components."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.services import require

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402

if not settings.configured:
    settings.configure(
        SECRET_KEY="capa-tests",
        USE_TZ=True,
        CACHES={"default": {"BACKEND": "capa_compat.django.cache.CapaCache",
                            "LOCATION": "memory://capa-tests-default"}},
    )
    django.setup()

from django.core.cache.backends.base import CacheKeyWarning, InvalidCacheBackendError  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.template import Context, Engine  # noqa: E402
from django.test import RequestFactory, override_settings  # noqa: E402
from django.views.decorators.cache import cache_control, cache_page  # noqa: E402

from capa_compat.django import cache as capa_cache  # noqa: E402
from capa_compat.django.backend import runtime_for_url  # noqa: E402
from capa_compat.django.cache import CacheHandler, CapaCache  # noqa: E402
from capa_core import Runtime  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REDIS_DB = "/2"


def location(backend: str, tmp: Path) -> str:
    if backend == "memory":
        return f"memory://django-{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'cache.sqlite3'}"
    return require("redis") + REDIS_DB


@pytest.fixture
def make_cache(tmp_path: Path, unique: str) -> Iterator[Callable[..., CapaCache]]:
    """CapaCache factory on one store per test; every key it made is removed afterwards."""
    made: list[CapaCache] = []

    def make(backend: str = "memory", **params: Any) -> CapaCache:
        options = params.setdefault("OPTIONS", {})
        options.setdefault("COMPONENT", {"key_prefix": f"t-{unique}"})
        loc = params.pop("LOCATION", None) or location(backend, tmp_path)
        cache = CapaCache(loc, params)
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.store.delete_prefix("")


BACKENDS = ["memory", "sqlite", "redis"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_django_semantics_on_each_component(make_cache: Any, backend: str) -> None:
    cache = make_cache(backend)
    cache.set("k", {"a": (1, 2)})
    assert cache.get("k") == {"a": (1, 2)}
    assert cache.get("missing", "dflt") == "dflt"
    assert cache.add("k", "other") is False
    assert cache.add("new", "v") is True
    cache.set("none", None)
    assert cache.get("none", "dflt") is None and cache.has_key("none")
    assert cache.set_many({"a": 1, "b": 2}) == []
    assert cache.get_many(["a", "b", "c"]) == {"a": 1, "b": 2}
    assert cache.delete("a") is True and cache.delete("a") is False
    cache.delete_many(["b", "new"])
    assert cache.get_many(["b", "new"]) == {}
    cache.set("n", 10)
    assert cache.incr("n", 5) == 15 and cache.decr("n") == 14
    with pytest.raises(ValueError, match="Key 'nope' not found"):
        cache.incr("nope")
    assert cache.incr_version("n") == 2
    assert cache.get("n") is None and cache.get("n", version=2) == 14
    assert cache.decr_version("n", version=2) == 1
    assert cache.get("n") == 14
    assert cache.get_or_set("gs", lambda: "made") == "made"
    assert cache.get_or_set("gs", "other") == "made"


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeouts_default_forever_and_zero(make_cache: Any, backend: str) -> None:
    cache = make_cache(backend, TIMEOUT=300)
    cache.set("default", 1)
    item = cache.store.get(cache.make_key("default"))
    assert item is not None and item.expires_at is not None
    assert 290 < item.expires_at - time.time() <= 300
    cache.set("forever", 1, timeout=None)
    assert cache.store.get(cache.make_key("forever")).expires_at is None
    cache.set("zero", 1, timeout=0)
    assert cache.get("zero") is None
    assert cache.add("zero", 1, timeout=0) is True and cache.get("zero") is None
    cache.set("short", 1, timeout=0.5)
    assert cache.touch("short", None) is True
    time.sleep(0.7)
    assert cache.get("short") == 1
    assert cache.touch("short", 0) is True and cache.get("short") is None
    assert cache.touch("short") is False


def test_forever_default_timeout(make_cache: Any) -> None:
    cache = make_cache(TIMEOUT=None)
    cache.set("k", 1)
    assert cache.store.get(cache.make_key("k")).expires_at is None


def test_incr_and_incr_version_keep_the_expiry(make_cache: Any) -> None:
    cache = make_cache()
    cache.set("n", 1, timeout=100)
    before = cache.store.get(cache.make_key("n")).expires_at
    assert cache.incr("n") == 2
    after = cache.store.get(cache.make_key("n")).expires_at
    assert abs(after - before) < 0.05
    cache.incr_version("n")
    moved = cache.store.get(cache.make_key("n", version=2)).expires_at
    assert abs(moved - before) < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_clear_removes_only_this_caches_keys(make_cache: Any, backend: str, unique: str) -> None:
    first = make_cache(backend, KEY_PREFIX="first")
    loc = first.location
    second = make_cache(backend, LOCATION=loc, KEY_PREFIX="second")
    first.set("k", 1)
    first.set("k", 1, version=7)
    second.set("k", 2)
    first.store.save("not-a-cache-key", "kept")  # another user of the same state component
    first.clear()
    assert first.get("k") is None and first.get("k", version=7) is None
    assert second.get("k") == 2
    assert first.store.get_value("not-a-cache-key") == "kept"


def test_custom_key_function_and_clear_prefix(make_cache: Any) -> None:
    cache = make_cache(KEY_FUNCTION=lambda key, prefix, version: f"app/{prefix}/{version}/{key}",
                       KEY_PREFIX="p")
    cache.set("k", 1)
    assert cache.store.get("app/p/1/k") is not None
    assert cache.scope() == "app/p/"
    other = make_cache(LOCATION=cache.location, OPTIONS={
        "CLEAR_PREFIX": "mine:", "COMPONENT": cache_component(cache)})
    assert other.scope() == "mine:"


def cache_component(cache: CapaCache) -> dict[str, Any]:
    prefix = cache.store.key_prefix.removesuffix("||")
    return {"key_prefix": prefix}


def test_key_warnings_are_djangos() -> None:
    cache = CapaCache("memory://", {"KEY_FUNCTION": lambda key, *args: key})
    key = "key with spaces"
    for operation, args in [("get", [key]), ("set", [key, 1]), ("add", [key, 1]),
                            ("delete", [key]), ("touch", [key]),
                            ("get_many", [[key]]), ("set_many", [{key: 1}])]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            getattr(cache, operation)(*args)
        assert [str(w.message) for w in caught] == [
            f"Cache key contains characters that will cause errors if used with memcached: "
            f"{key!r}"
        ], operation
        assert all(issubclass(w.category, CacheKeyWarning) for w in caught)
    long_key = "a" * 251
    with pytest.warns(CacheKeyWarning, match=r"\(longer than 250\)"):
        cache.get(long_key)


def test_culling_with_max_entries(make_cache: Any) -> None:
    cache = make_cache(OPTIONS={"MAX_ENTRIES": 30})
    for i in range(1, 50):
        cache.set(f"cull{i}", "v", 1000)
    assert sum(cache.has_key(f"cull{i}") for i in range(1, 50)) == 29
    zero = make_cache(OPTIONS={"MAX_ENTRIES": 30, "CULL_FREQUENCY": 0})
    for i in range(1, 50):
        zero.set(f"cull{i}", "v", 1000)
    assert sum(zero.has_key(f"cull{i}") for i in range(1, 50)) == 19


def test_json_serializer_values_are_readable_by_capa(make_cache: Any) -> None:
    cache = make_cache(OPTIONS={"SERIALIZER": "json"})
    cache.set("k", {"n": 1})
    assert cache.store.get_value(cache.make_key("k")) == {"n": 1}
    assert cache.incr("k2", 1) if cache.add("k2", 1) else None
    assert cache.get("k2") == 2


def test_bytes_that_are_not_a_pickle_name_the_key(make_cache: Any) -> None:
    cache = make_cache()
    cache.store.save(cache.make_key("bad"), b"\x80not a pickle")
    with pytest.raises(ValueError, match="cache key ':1:bad' holds bytes that are not a pickle"):
        cache.get("bad")


def test_location_naming_no_component_lists_the_configured_ones() -> None:
    runtime = Runtime.from_mapping({"capa": {"default_url": "memory://"},
                                    "state": {"sessions": {"url": "memory://"}}})
    with pytest.raises(InvalidCacheBackendError) as raised:
        CapaCache("sesions", {"OPTIONS": {"RUNTIME": runtime}})
    message = str(raised.value)
    assert "LOCATION 'sesions' names no capa state component" in message
    assert "'default', 'sessions'" in message and "[state.sesions]" in message
    ok = CapaCache("sessions", {"OPTIONS": {"RUNTIME": runtime}})
    ok.set("k", 1)
    assert runtime.state("sessions").get(":1:k") is not None


def test_bad_urls_and_options_fail_naming_the_setting() -> None:
    with pytest.raises(InvalidCacheBackendError, match="LOCATION 'mongo://x'"):
        CapaCache("mongo://x", {})
    with pytest.raises(InvalidCacheBackendError, match="SERIALIZER"):
        CapaCache("memory://", {"OPTIONS": {"SERIALIZER": "yaml"}})
    with pytest.raises(InvalidCacheBackendError, match="RUNTIME"):
        CapaCache("x", {"OPTIONS": {"RUNTIME": "no.such.module.runtime"}})
    handler = CacheHandler({"c": {"BACKEND": "capa_compat.django.cache.CapaCache",
                                  "LOCATION": "mongo://x"}})
    with pytest.raises(InvalidCacheBackendError, match=r"CACHES\['c'\]"):
        handler["c"]


def test_same_location_shares_one_store() -> None:
    loc = f"memory://shared-{uuid.uuid4().hex[:8]}"
    CapaCache(loc, {}).set("k", 1)
    assert CapaCache(loc, {}).get("k") == 1
    assert CapaCache(f"memory://other-{uuid.uuid4().hex[:8]}", {}).get("k") is None


def test_legacy_backends_are_served_by_capa(tmp_path: Path, unique: str) -> None:
    redis_url = require("redis") + REDIS_DB
    handler = CacheHandler({
        "redis": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                  "LOCATION": [redis_url, "redis://replica:6379/2"],
                  "KEY_PREFIX": unique},
        "django_redis": {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": redis_url,
                         "KEY_PREFIX": unique,
                         "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"}},
        "locmem": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                   "LOCATION": f"snowflake-{unique}"},
        "files": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                  "LOCATION": str(tmp_path / "cache-dir")},
        "dummy": {"BACKEND": "django.core.cache.backends.dummy.DummyCache"},
    })
    try:
        for alias in ("redis", "django_redis", "locmem", "files"):
            assert isinstance(handler[alias], CapaCache), alias
        handler["redis"].set("k", "v")
        assert handler["django_redis"].get("k") == "v"  # same LOCATION, same prefix: same entry
        assert runtime_for_url(redis_url).state("cache").get(f"{unique}:1:k") is not None
        handler["files"].set("f", 1)
        assert (tmp_path / "cache-dir" / "django-cache.sqlite3").is_file()
        locmem = CacheHandler({"x": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache",
                                     "LOCATION": f"snowflake-{unique}"}})
        handler["locmem"].set("m", 1)
        assert locmem["x"].get("m") == 1  # same LocMem name, same entries
        assert type(handler["dummy"]).__name__ == "DummyCache"
    finally:
        handler["redis"].clear()


def test_install_routes_djangos_own_handler() -> None:
    from django.core.cache import caches

    legacy = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    with override_settings(CACHES=legacy):
        assert type(caches["default"]).__name__ == "LocMemCache"
        capa_cache.install()
        capa_cache.install()  # idempotent
        try:
            assert isinstance(caches["default"], CapaCache)
        finally:
            capa_cache.uninstall()
        assert type(caches["default"]).__name__ == "LocMemCache"


def capa_settings(unique: str) -> dict[str, Any]:
    return {"default": {"BACKEND": "capa_compat.django.cache.CapaCache",
                        "LOCATION": f"memory://views-{unique}"}}


def test_cache_page_and_cache_control_on_capa(unique: str) -> None:
    calls = []

    @cache_page(60)
    @cache_control(max_age=60, public=True)
    def view(request: Any) -> HttpResponse:
        calls.append(1)
        return HttpResponse(f"response {len(calls)}")

    factory = RequestFactory()
    with override_settings(CACHES=capa_settings(unique), ALLOWED_HOSTS=["testserver"]):
        first = view(factory.get("/page"))
        second = view(factory.get("/page"))
        from django.core.cache import caches

        assert isinstance(caches["default"], CapaCache)
    assert first.content == second.content == b"response 1" and len(calls) == 1
    assert "max-age=60" in second["Cache-Control"]


def test_template_fragment_cache_on_capa(unique: str) -> None:
    engine = Engine(libraries={"cache": "django.templatetags.cache"})
    template = engine.from_string("{% load cache %}{% cache 60 frag %}{{ n }}{% endcache %}")
    with override_settings(CACHES=capa_settings(unique)):
        assert template.render(Context({"n": 1})) == "1"
        assert template.render(Context({"n": 2})) == "1"


def test_async_twins(make_cache: Any) -> None:
    cache = make_cache()

    async def scenario() -> None:
        assert await cache.aadd("a", 1) is True
        assert await cache.aadd("a", 2) is False
        await cache.aset("b", [1, 2])
        assert await cache.aget("b") == [1, 2]
        assert await cache.aget("zz", "d") == "d"
        assert await cache.ahas_key("a")
        assert await cache.aset_many({"c": 3, "d": 4}) == []
        assert await cache.aget_many(["a", "c", "d", "x"]) == {"a": 1, "c": 3, "d": 4}
        assert await cache.aget_or_set("e", lambda: 5) == 5
        assert await cache.aincr("a", 10) == 11 and await cache.adecr("a") == 10
        assert await cache.atouch("a", None) is True
        assert await cache.aincr_version("a") == 2
        assert await cache.adecr_version("a", version=2) == 1
        assert await cache.adelete("a") is True and await cache.adelete("a") is False
        await cache.adelete_many(["c", "d"])
        assert await cache.aget_many(["c", "d"]) == {}
        # Concurrent increments on the event loop: each one lands (compare-and-swap).
        await cache.aset("counter", 0)
        await asyncio.gather(*(cache.aincr("counter") for _ in range(50)))
        assert await cache.aget("counter") == 50
        await cache.aclear()
        assert await cache.aget("b") is None
        await cache.aclose()

    asyncio.run(scenario())


def test_async_twins_warn_like_the_sync_methods() -> None:
    cache = CapaCache("memory://", {})
    with pytest.warns(CacheKeyWarning):
        asyncio.run(cache.aget("key with space"))


def test_threads_incrementing_lose_nothing(make_cache: Any) -> None:
    import threading

    cache = make_cache()
    cache.set("n", 0)

    def work() -> None:
        for _ in range(200):
            cache.incr("n")

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert cache.get("n") == 800


INCREMENTER = textwrap.dedent(
    """
    import sys
    from capa_compat.django.backend import CapaCache
    cache = CapaCache(sys.argv[1], {"OPTIONS": {"COMPONENT": {"key_prefix": sys.argv[2]}}})
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(int(sys.argv[3])):
        cache.incr("counter")
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_processes_incrementing_one_key_lose_nothing(
    make_cache: Any, backend: str, unique: str
) -> None:
    cache = make_cache(backend)
    cache.set("counter", 0)
    per_process = 300
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", INCREMENTER, cache.location, f"t-{unique}", str(per_process)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for process in processes:  # start both together, so their increments interleave
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        for process in processes:
            assert process.wait(timeout=60) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert cache.get("counter") == 2 * per_process
