"""Drop-in for ``django.core.cache`` whose caches (legacy backends included) run on capa state.

    from capa_compat.django.cache import cache, caches        # was: from django.core.cache ...

Backends for CACHES: ``CapaCache`` (LOCATION a capa component name or URL), and twins of the
legacy backends that read LOCATION the way the original does (``RedisCache``, ``LocMemCache``,
``FileBasedCache``, ``DatabaseCache``, ``PyMemcacheCache``/``PyLibMCCache``), all on capa state.

``caches`` reads settings.CACHES like Django's handler. Entries naming ``CapaCache`` are used as
written; entries naming Django's own backends (RedisCache, LocMemCache, FileBasedCache,
DatabaseCache, the memcached ones) or django-redis's are served by ``CapaCache`` with their
LOCATION (see ``capa_params``). ``install()`` routes Django's own ``django.core.cache.caches`` the
same way, so the cache middleware, ``cache_page`` and ``{% cache %}`` use capa without changes to
CACHES; ``uninstall()`` undoes it.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from typing import Any

import wrapt
from asgiref.local import Local
from django.core import signals
from django.core.cache import CacheHandler as DjangoCacheHandler
from django.core.cache.backends.base import (
    BaseCache,
    CacheKeyWarning,
    InvalidCacheBackendError,
    InvalidCacheKey,
)
from django.core.signals import setting_changed
from django.utils.connection import ConnectionProxy
from django.utils.module_loading import import_string

from .backend import CapaCache

__all__ = [
    "DEFAULT_CACHE_ALIAS",
    "BaseCache",
    "CacheHandler",
    "CacheKeyWarning",
    "CapaCache",
    "DatabaseCache",
    "FileBasedCache",
    "InvalidCacheBackendError",
    "InvalidCacheKey",
    "LocMemCache",
    "PyLibMCCache",
    "PyMemcacheCache",
    "RedisCache",
    "cache",
    "caches",
    "capa_params",
    "close_caches",
    "install",
    "uninstall",
]

DEFAULT_CACHE_ALIAS = "default"
BACKEND = "capa_compat.django.cache.CapaCache"

# OPTIONS that mean something to CapaCache; a legacy backend's driver options are dropped.
_CAPA_OPTIONS = ("RUNTIME", "COMPONENT", "SERIALIZER", "CLEAR_PREFIX", "MAX_ENTRIES",
                 "CULL_FREQUENCY")
_REDIS_BACKENDS = (
    "django.core.cache.backends.redis.RedisCache",
    "django_redis.cache.RedisCache",
)
_LOCMEM = "django.core.cache.backends.locmem.LocMemCache"
_FILEBASED = "django.core.cache.backends.filebased.FileBasedCache"
# Stores without a capa component of their own: served by the runtime's default state store.
_DEFAULT_STORE_BACKENDS = (
    "django.core.cache.backends.db.DatabaseCache",
    "django.core.cache.backends.memcached.PyMemcacheCache",
    "django.core.cache.backends.memcached.PyLibMCCache",
)
LEGACY_BACKENDS = (*_REDIS_BACKENDS, _LOCMEM, _FILEBASED, *_DEFAULT_STORE_BACKENDS)


def capa_params(
    backend: str, location: Any, params: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The CapaCache LOCATION and params serving a legacy CACHES entry.

    RedisCache / django-redis: the first server URL (the primary, where Django writes).
    LocMemCache: an in-process memory store named by LOCATION (same name, same entries).
    FileBasedCache: a SQLite file in the LOCATION directory (durable, shared between processes).
    DatabaseCache and memcached: the runtime's default state component.
    """
    params = dict(params)
    options = dict(params.get("OPTIONS") or {})
    params["OPTIONS"] = {k: v for k, v in options.items() if k in _CAPA_OPTIONS}
    if backend in _REDIS_BACKENDS:
        servers = location if isinstance(location, list | tuple) else re.split("[;,]", location)
        return str(servers[0]).strip(), params
    if backend == _LOCMEM:
        name = location or "default"
        params["OPTIONS"].setdefault("COMPONENT", {"namespace": f"django-locmem:{name}"})
        return "memory://", params
    if backend == _FILEBASED:
        directory = os.path.abspath(os.fspath(location))
        os.makedirs(directory, exist_ok=True)
        return f"sqlite:///{os.path.join(directory, 'django-cache.sqlite3')}", params
    if backend in _DEFAULT_STORE_BACKENDS:
        return "", params
    raise InvalidCacheBackendError(
        f"{backend!r} is not a cache backend capa serves; known: {', '.join(LEGACY_BACKENDS)}"
    )


# --- the legacy backends' twins: CapaCache reading LOCATION the way each legacy backend does, so
# a settings file can name them in place of the originals (the codemod does) with LOCATION kept.


class RedisCache(CapaCache):
    """Django's RedisCache (or django-redis's) LOCATION: server URL(s); the first takes writes."""

    def __init__(self, server: Any, params: Mapping[str, Any]) -> None:
        super().__init__(*capa_params(_REDIS_BACKENDS[0], server, params))


class LocMemCache(CapaCache):
    """LocMemCache's LOCATION: a name; caches of this process naming it share the entries."""

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        super().__init__(*capa_params(_LOCMEM, name, params))


class FileBasedCache(CapaCache):
    """FileBasedCache's LOCATION: a directory; the entries live in a SQLite file there."""

    def __init__(self, dir: str, params: Mapping[str, Any]) -> None:
        super().__init__(*capa_params(_FILEBASED, dir, params))


class DatabaseCache(CapaCache):
    """DatabaseCache's LOCATION (a table) is not used: the runtime's default state store is."""

    def __init__(self, table: str, params: Mapping[str, Any]) -> None:
        super().__init__(*capa_params(_DEFAULT_STORE_BACKENDS[0], table, params))


class PyMemcacheCache(CapaCache):
    """Memcached's LOCATION (servers) is not used: the runtime's default state store is."""

    def __init__(self, server: Any, params: Mapping[str, Any]) -> None:
        super().__init__(*capa_params(_DEFAULT_STORE_BACKENDS[1], server, params))


PyLibMCCache = PyMemcacheCache

TWINS: dict[str, type[CapaCache]] = {
    "django.core.cache.backends.redis.RedisCache": RedisCache,
    "django_redis.cache.RedisCache": RedisCache,
    _LOCMEM: LocMemCache,
    _FILEBASED: FileBasedCache,
    "django.core.cache.backends.db.DatabaseCache": DatabaseCache,
    "django.core.cache.backends.memcached.PyMemcacheCache": PyMemcacheCache,
    "django.core.cache.backends.memcached.PyLibMCCache": PyLibMCCache,
}


def _connect(alias: str, settings: Mapping[str, Any], fallback: Any = None) -> BaseCache:
    params = dict(settings[alias])
    backend = params.pop("BACKEND")
    location = params.pop("LOCATION", "")
    if backend not in LEGACY_BACKENDS and backend != BACKEND:
        if fallback is not None:
            return fallback(alias)  # type: ignore[no-any-return]
        try:
            backend_cls = import_string(backend)
        except ImportError as exc:
            raise InvalidCacheBackendError(f"Could not find backend '{backend}': {exc}") from exc
        return backend_cls(location, params)  # type: ignore[no-any-return]
    try:
        return TWINS.get(backend, CapaCache)(location, params)
    except InvalidCacheBackendError as exc:
        # Name the CACHES entry: the backend alone cannot know which alias it serves.
        raise InvalidCacheBackendError(f"CACHES[{alias!r}]: {exc}") from exc


class CacheHandler(DjangoCacheHandler):
    """Django's cache handler, with legacy backends served by CapaCache."""

    def create_connection(self, alias):  # type: ignore[no-untyped-def]
        return _connect(alias, self.settings)


caches = CacheHandler()

cache = ConnectionProxy(caches, DEFAULT_CACHE_ALIAS)


def close_caches(**kwargs: Any) -> None:
    """Close this handler's caches at the end of a request, as Django does for its own."""
    caches.close_all()


signals.request_finished.connect(close_caches)


def _reset_on_settings_change(*, setting: str, **kwargs: Any) -> None:
    # override_settings(CACHES=...) must reach this handler as it reaches Django's.
    if setting == "CACHES":
        close_caches()
        caches._settings = caches.settings = caches.configure_settings(None)
        caches._connections = Local()


setting_changed.connect(_reset_on_settings_change)


# --- routing Django's own handler ----------------------------------------------------------------

_installed = False
_install_lock = threading.Lock()


def _create_connection(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    alias = args[0] if args else kwargs["alias"]
    return _connect(alias, instance.settings, fallback=lambda a: wrapped(a))


def install() -> None:
    """Serve legacy CACHES entries of Django's own handler by CapaCache too (idempotent)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        wrapt.wrap_function_wrapper(DjangoCacheHandler, "create_connection", _create_connection)
        _installed = True
        _drop_connections()


def uninstall() -> None:
    """Give Django's handler its own backends back."""
    global _installed
    with _install_lock:
        if not _installed:
            return
        wrapper = DjangoCacheHandler.__dict__["create_connection"]
        DjangoCacheHandler.create_connection = wrapper.__wrapped__  # type: ignore[method-assign]
        _installed = False
        _drop_connections()


def installed() -> bool:
    return _installed


def _drop_connections() -> None:
    """Forget the caches Django's handler made, so the next access builds them the new way."""
    from django.core.cache import caches as django_caches

    django_caches._connections = Local()
