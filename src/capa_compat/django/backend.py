"""CapaCache: a Django cache backend (a real BaseCache) keeping its entries in capa state.

CACHES = {"default": {"BACKEND": "capa_compat.django.cache.CapaCache", "LOCATION": ...}}

LOCATION is one of
  ""                          the "default" state component of the runtime
  "cache"                     a state component configured in capa.toml (or in OPTIONS["RUNTIME"])
  "redis://127.0.0.1:6379/0"  a URL: a component is made from it (sqlite:///path, memory://NAME...)

OPTIONS, besides Django's own MAX_ENTRIES and CULL_FREQUENCY:
  RUNTIME      the capa Runtime for named LOCATIONs: a Runtime, a callable returning one, a dotted
               path to either, or the path of a capa.toml / capa.yaml (default: Runtime.default())
  COMPONENT    extra component settings when LOCATION is a URL, e.g. {"key_prefix": "shop"}
  SERIALIZER   "pickle" (Django's choice, the default) or "json" (values readable by any capa app)
  CLEAR_PREFIX the key prefix clear() removes (default: derived from KEY_PREFIX / KEY_FUNCTION)

Timeouts, KEY_PREFIX, VERSION, KEY_FUNCTION and key warnings behave as in Django. incr/decr and
touch are compare-and-swap loops on ETags, so they are atomic across processes. clear() removes
only this cache's keys. Entries are culled only when MAX_ENTRIES is set explicitly: a Redis or
SQLite store evicts by its own policy, and counting keys on every write would cost a listing.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import os
import pickle
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.cache.backends.base import (
    DEFAULT_TIMEOUT,
    BaseCache,
    InvalidCacheBackendError,
    default_key_func,
)
from django.utils.module_loading import import_string

from capa_core import (
    BulkStateError,
    CapaError,
    ComponentNotFound,
    Concurrency,
    Delete,
    ETagMismatch,
    Runtime,
    StateStore,
    UnsupportedFeature,
    Upsert,
)

__all__ = ["CapaCache", "runtime_for_url"]

# Bounds the compare-and-swap loops of incr/touch: a key rewritten this often by others while
# we try is a hot spot the caller should know about, not something to spin on forever.
_CAS_ATTEMPTS = 1000
_LAST = Concurrency.LAST_WRITE
_FIRST = Concurrency.FIRST_WRITE

_url_runtimes: dict[str, Runtime] = {}
_file_runtimes: dict[str, Runtime] = {}
_runtimes_lock = threading.Lock()


def runtime_for_url(url: str, component: Mapping[str, Any] | None = None) -> Runtime:
    """The process-wide Runtime holding one state component "cache" made from ``url``.

    Caches with the same LOCATION (and COMPONENT options) share it, and so share one store and
    one connection pool, as Django's backends do for one LOCATION.
    """
    metadata = dict(component or {})
    key = url + "\0" + json.dumps(metadata, sort_keys=True, default=str)
    with _runtimes_lock:
        runtime = _url_runtimes.get(key)
        if runtime is None:
            table: dict[str, Any] = {"url": url, **metadata}
            parts = urlsplit(url)
            name = (parts.netloc + parts.path).strip("/")
            if parts.scheme == "memory" and name and "namespace" not in table:
                # memory://NAME: every cache of this process naming NAME sees the same entries.
                table["namespace"] = name
            try:
                runtime = Runtime.from_mapping(
                    {"capa": {"default_url": "memory://"}, "state": {"cache": table}}
                )
            except CapaError as exc:
                raise InvalidCacheBackendError(
                    f"CapaCache LOCATION {url!r} cannot be used: {exc}"
                ) from exc
            _url_runtimes[key] = runtime
        return runtime


def _runtime_from_option(option: Any) -> Runtime:
    """OPTIONS["RUNTIME"]: a Runtime, a factory, a dotted path to either, or a settings file."""
    if option is None:
        return Runtime.default()
    if isinstance(option, Runtime):
        return option
    if isinstance(option, str | os.PathLike):
        text = os.fspath(option)
        if text.endswith((".toml", ".yaml", ".yml")):
            path = os.path.abspath(text)
            with _runtimes_lock:
                runtime = _file_runtimes.get(path)
                if runtime is None:
                    try:
                        runtime = _file_runtimes[path] = Runtime.from_settings(path)
                    except CapaError as exc:
                        raise InvalidCacheBackendError(
                            f"CapaCache OPTIONS['RUNTIME'] = {text!r}: {exc}"
                        ) from exc
                return runtime
        try:
            option = import_string(text)
        except ImportError as exc:
            raise InvalidCacheBackendError(
                f"CapaCache OPTIONS['RUNTIME'] = {text!r} cannot be imported ({exc}). Fix: give "
                "a Runtime, a function returning one, its dotted path, or a capa.toml path"
            ) from exc
        if isinstance(option, Runtime):
            return option
    if callable(option):
        runtime = option()
        if isinstance(runtime, Runtime):
            return runtime
    raise InvalidCacheBackendError(
        f"CapaCache OPTIONS['RUNTIME'] = {option!r} is not a capa Runtime. Fix: give a Runtime, a "
        "function returning one, its dotted path, or the path of a capa.toml"
    )


def _state_store(location: str, options: Mapping[str, Any]) -> StateStore:
    if "://" in location:
        return runtime_for_url(location, options.get("COMPONENT")).state("cache")
    runtime = _runtime_from_option(options.get("RUNTIME"))
    name = location or "default"
    try:
        return runtime.state(name)
    except ComponentNotFound as exc:
        listed = ", ".join(repr(k) for k in exc.known) or "none"
        raise InvalidCacheBackendError(
            f"CapaCache LOCATION {location!r} names no capa state component; configured state "
            f"components: {listed}. Fix: set LOCATION to one of them, to a URL "
            f"(redis://127.0.0.1:6379/0, sqlite:///cache.db, memory://), or add a "
            f"[state.{name}] table to capa.toml"
        ) from exc


class _Pickle:
    """Django's serialization: any picklable value, stored as pickle bytes."""

    name = "pickle"
    # A C-level partial: no Python frame on every write.
    dumps = staticmethod(functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL))

    def loads(self, data: Any, key: str) -> Any:
        if not isinstance(data, bytes):
            return data  # written through capa's own codec by another program: take it as is
        try:
            return pickle.loads(data)
        except Exception as exc:
            raise ValueError(
                f"cache key {key!r} holds bytes that are not a pickle ({exc}); they were not "
                "written by CapaCache. Fix: delete the key or use another KEY_PREFIX"
            ) from exc


class _Json:
    """Values through the runtime's codec (JSON): readable by every capa application."""

    name = "json"

    def dumps(self, value: Any) -> Any:
        return value

    def loads(self, data: Any, key: str) -> Any:
        return data


_SERIALIZERS: dict[str, Callable[[], _Pickle | _Json]] = {"pickle": _Pickle, "json": _Json}


class CapaCache(BaseCache):
    """A Django cache on a capa state component; see the module docstring for the settings."""

    def __init__(self, location: str | list[str] | tuple[str, ...], params: Mapping[str, Any]):
        super().__init__(params)
        options = params.get("OPTIONS") or {}
        if isinstance(location, list | tuple):
            location = location[0] if location else ""
        elif "://" in location and re.search("[;,]", location):
            # Django's and django-redis's form for several servers: the first takes the writes.
            location = re.split("[;,]", location)[0].strip()
        self.location = location or ""
        serializer = options.get("SERIALIZER", "pickle")
        if serializer not in _SERIALIZERS:
            raise InvalidCacheBackendError(
                f"CapaCache OPTIONS['SERIALIZER'] = {serializer!r} is not known. Fix: use "
                f"one of {', '.join(repr(s) for s in _SERIALIZERS)}"
            )
        self._serializer = _SERIALIZERS[serializer]()
        self._dumps = self._serializer.dumps
        self._loads = self._serializer.loads
        self._culling = "max_entries" in params or "MAX_ENTRIES" in options
        self._clear_prefix: str | None = options.get("CLEAR_PREFIX")
        self._store = _state_store(self.location, options)
        # Django's set is last-write. A store made here from a URL writes last-write by default,
        # so its writes can leave the concurrency to the store (cheaper per call); a configured
        # component may default to first-write, so writes to it say last-write explicitly.
        component = options.get("COMPONENT") or {}
        made_here = "://" in self.location and "concurrency" not in component
        self._last_write = None if made_here else _LAST

    @property
    def store(self) -> StateStore:
        """The capa state client this cache writes through."""
        return self._store

    # --- keys, timeouts and culling --------------------------------------------------------------

    def _ttl(self, timeout: Any) -> float | None:
        """Seconds to live for capa: None forever, 0.0 expire now, else > 0."""
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is None:
            return None
        return float(timeout) if timeout > 0 else 0.0

    def scope(self) -> str:
        """The key prefix shared by every key this cache makes: what clear() removes."""
        if self._clear_prefix is not None:
            return self._clear_prefix
        if self.key_func is default_key_func:
            return f"{self.key_prefix}:"
        # A custom KEY_FUNCTION: the part its keys have in common whatever the key and version.
        samples = [
            str(self.key_func("a", self.key_prefix, self.version)),
            str(self.key_func("b", self.key_prefix, self.version + 1)),
        ]
        return os.path.commonprefix(samples)  # noqa: RUF071 (a string prefix is wanted)

    def _cull(self) -> None:
        """Django's MAX_ENTRIES / CULL_FREQUENCY, evicting the entries closest to expiry first."""
        scope = self.scope()
        keys = self._store.keys(scope)
        if len(keys) < self._max_entries:
            return
        if self._cull_frequency == 0:
            self._store.delete_prefix(scope)
            return
        count = len(keys) // self._cull_frequency
        if count <= 0:
            return
        items = self._store.bulk_get(keys)

        def expiry(pair: tuple[str, Any]) -> float:
            item = pair[1]
            if item is None:
                return -1.0  # gone already
            return float("inf") if item.expires_at is None else float(item.expires_at)

        doomed = sorted(zip(keys, items, strict=True), key=expiry)[:count]
        self._store.bulk_delete([key for key, _ in doomed])

    @staticmethod
    def _remaining(expires_at: float | None) -> float | None:
        return None if expires_at is None else expires_at - time.time()

    # --- the primitives, on finished keys (the sync and async methods share them) ----------------

    def _add(self, key: str, data: Any, ttl: float | None) -> bool:
        if self._culling:
            self._cull()
        try:
            self._store.save(key, data, ttl=ttl or None, concurrency=_FIRST)
        except ETagMismatch:
            return False
        if ttl == 0.0:
            self._store.delete(key)  # timeout 0: added, and expired at once (as Django does)
        return True

    def _get(self, key: str, default: Any) -> Any:
        item = self._store.get(key)
        if item is None:
            return default
        return self._loads(item.value, key)

    def _set(self, key: str, data: Any, ttl: float | None) -> None:
        if ttl == 0.0:
            self._store.delete(key)
            return
        if self._culling:
            self._cull()
        self._store.save(key, data, ttl=ttl, concurrency=self._last_write)

    def _touch(self, key: str, ttl: float | None) -> bool:
        for attempt in range(_CAS_ATTEMPTS):
            item = self._store.get(key)
            if item is None:
                return False
            try:
                if ttl == 0.0:
                    self._store.delete(key, etag=item.etag)
                else:
                    self._store.save(key, item.value, etag=item.etag, ttl=ttl)
                return True
            except ETagMismatch:
                _pause(attempt)
        raise _contended(key)

    def _delete(self, key: str) -> bool:
        if self._store.get(key) is None:
            return False
        self._store.delete(key)
        return True

    def _has_key(self, key: str) -> bool:
        return self._store.get(key) is not None

    def _get_many(self, made: Mapping[str, Any]) -> dict[Any, Any]:
        if not made:
            return {}
        loads = self._loads
        return {
            made[i.key]: loads(i.value, i.key)
            for i in self._store.bulk_get(list(made))
            if i is not None
        }

    def _set_many(self, made: Mapping[str, tuple[Any, Any]], ttl: float | None) -> list[Any]:
        if not made:
            return []
        if ttl == 0.0:
            self._store.bulk_delete(list(made))
            return []
        if self._culling:
            self._cull()
        entries = [
            Upsert(key, data, ttl=ttl, concurrency=self._last_write)
            for key, (_, data) in made.items()
        ]
        try:
            self._store.bulk_save(entries)
        except BulkStateError as exc:
            return [made[key][0] for key in exc.failures]
        return []

    def _delete_many(self, keys: list[str]) -> None:
        if keys:
            self._store.bulk_delete(keys)

    def _incr(self, key: str, made: str, delta: Any) -> Any:
        for attempt in range(_CAS_ATTEMPTS):
            item = self._store.get(made)
            remaining = None if item is None else self._remaining(item.expires_at)
            if item is None or (remaining is not None and remaining <= 0):
                raise ValueError(f"Key '{key}' not found")
            new_value = self._loads(item.value, made) + delta
            try:
                # The ETag makes this a compare-and-swap: a concurrent writer (another thread or
                # process) makes it fail, and we add to the value it wrote. The expiry is kept.
                self._store.save(made, self._dumps(new_value), etag=item.etag, ttl=remaining)
            except ETagMismatch:
                _pause(attempt)
                continue
            return new_value
        raise _contended(made)

    def _move(self, key: str, old: str, new: str) -> None:
        item = self._store.get(old)
        remaining = None if item is None else self._remaining(item.expires_at)
        if item is None or (remaining is not None and remaining <= 0):
            raise ValueError(f"Key '{key}' not found")
        try:
            self._store.transaction([Upsert(new, item.value, ttl=remaining), Delete(old)])
        except UnsupportedFeature:
            self._store.save(new, item.value, ttl=remaining, concurrency=_LAST)
            self._store.delete(old)

    # --- BaseCache -------------------------------------------------------------------------------

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        key = self.make_and_validate_key(key, version=version)
        return self._add(key, self._dumps(value), self._ttl(timeout))

    def get(self, key, default=None, version=None):  # type: ignore[no-untyped-def]
        key = self.make_and_validate_key(key, version=version)
        item = self._store.get(key)
        if item is None:
            return default
        return self._loads(item.value, key)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        # _set() inlined: set is the hot path of a cache.
        key = self.make_and_validate_key(key, version=version)
        data = self._dumps(value)
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        if timeout is not None and timeout <= 0:
            self._store.delete(key)
            return
        if self._culling:
            self._cull()
        if self._last_write is None:
            self._store.save(key, data, ttl=timeout)
        else:
            self._store.save(key, data, ttl=timeout, concurrency=self._last_write)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        key = self.make_and_validate_key(key, version=version)
        return self._touch(key, self._ttl(timeout))

    def delete(self, key, version=None):  # type: ignore[no-untyped-def]
        return self._delete(self.make_and_validate_key(key, version=version))

    def has_key(self, key, version=None):  # type: ignore[no-untyped-def]
        return self._has_key(self.make_and_validate_key(key, version=version))

    def get_many(self, keys, version=None):  # type: ignore[no-untyped-def]
        return self._get_many(self._made(keys, version))

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        return self._set_many(self._made_items(data, version), self._ttl(timeout))

    def delete_many(self, keys, version=None):  # type: ignore[no-untyped-def]
        self._delete_many(list(self._made(keys, version)))

    def incr(self, key, delta=1, version=None):  # type: ignore[no-untyped-def]
        return self._incr(key, self.make_and_validate_key(key, version=version), delta)

    def incr_version(self, key, delta=1, version=None):  # type: ignore[no-untyped-def]
        if version is None:
            version = self.version
        old = self.make_and_validate_key(key, version=version)
        new = self.make_and_validate_key(key, version=version + delta)
        self._move(key, old, new)
        return version + delta

    def clear(self):  # type: ignore[no-untyped-def]
        self._store.delete_prefix(self.scope())

    def close(self, **kwargs):  # type: ignore[no-untyped-def]
        # Django closes caches after every request; the runtime's pools outlive requests.
        pass

    def _made(self, keys: Iterable[Any], version: Any) -> dict[str, Any]:
        return {self.make_and_validate_key(k, version=version): k for k in keys}

    def _made_items(self, data: Mapping[Any, Any], version: Any) -> dict[str, tuple[Any, Any]]:
        made = {}
        for k, v in data.items():
            made[self.make_and_validate_key(k, version=version)] = (k, self._dumps(v))
        return made

    # --- the async twins: keys are made (and warned about) on the caller's thread; the store
    # call runs in a worker thread so the event loop never waits on the network.

    async def aadd(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        key = self.make_and_validate_key(key, version=version)
        return await _run(self._add, key, self._dumps(value), self._ttl(timeout))

    async def aget(self, key, default=None, version=None):  # type: ignore[no-untyped-def]
        return await _run(self._get, self.make_and_validate_key(key, version=version), default)

    async def aset(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        key = self.make_and_validate_key(key, version=version)
        await _run(self._set, key, self._dumps(value), self._ttl(timeout))

    async def atouch(self, key, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        key = self.make_and_validate_key(key, version=version)
        return await _run(self._touch, key, self._ttl(timeout))

    async def adelete(self, key, version=None):  # type: ignore[no-untyped-def]
        return await _run(self._delete, self.make_and_validate_key(key, version=version))

    async def ahas_key(self, key, version=None):  # type: ignore[no-untyped-def]
        return await _run(self._has_key, self.make_and_validate_key(key, version=version))

    async def aget_many(self, keys, version=None):  # type: ignore[no-untyped-def]
        return await _run(self._get_many, self._made(keys, version))

    async def aset_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):  # type: ignore[no-untyped-def]
        made = self._made_items(data, version)
        return await _run(self._set_many, made, self._ttl(timeout))

    async def adelete_many(self, keys, version=None):  # type: ignore[no-untyped-def]
        await _run(self._delete_many, list(self._made(keys, version)))

    async def aincr(self, key, delta=1, version=None):  # type: ignore[no-untyped-def]
        made = self.make_and_validate_key(key, version=version)
        return await _run(self._incr, key, made, delta)

    async def adecr(self, key, delta=1, version=None):  # type: ignore[no-untyped-def]
        return await self.aincr(key, -delta, version=version)

    async def aincr_version(self, key, delta=1, version=None):  # type: ignore[no-untyped-def]
        if version is None:
            version = self.version
        old = self.make_and_validate_key(key, version=version)
        new = self.make_and_validate_key(key, version=version + delta)
        await _run(self._move, key, old, new)
        return version + delta

    async def adecr_version(self, key, delta=1, version=None):  # type: ignore[no-untyped-def]
        return await self.aincr_version(key, -delta, version)

    async def aclear(self):  # type: ignore[no-untyped-def]
        await _run(self.clear)


_run = asyncio.to_thread


def _pause(attempt: int) -> None:
    """Back off a little after repeated compare-and-swap conflicts, with jitter."""
    if attempt >= 3:
        time.sleep(random.uniform(0, min(0.001 * attempt, 0.05)))


def _contended(key: str) -> RuntimeError:
    return RuntimeError(
        f"cache key {key!r} changed under {_CAS_ATTEMPTS} consecutive compare-and-swap attempts; "
        "it is rewritten faster than it can be updated"
    )


@atexit.register
def _close_runtimes() -> None:
    with _runtimes_lock:
        for runtime in [*_url_runtimes.values(), *_file_runtimes.values()]:
            # The process is ending; a close failure must not mask its exit status.
            with contextlib.suppress(Exception):
                runtime.close()
        _url_runtimes.clear()
        _file_runtimes.clear()
