"""The capa Runtimes behind kombu and Celery URLs, one per process and URL, and legacy URL mapping.

``capa://NAME`` names a component configured in capa.toml (or CAPA_* variables) of the working
directory. A legacy URL (``redis://``, ``amqp://``, ``sqla+sqlite://``...) becomes
``capa+<url>``: the component of the matching type is built from the URL itself, so every process
that reads the same configuration reaches the same middleware.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from capa_core import Runtime
from capa_core.errors import SettingsError

CAPA_SCHEME = "capa"
CAPA_PREFIX = "capa+"
DEFAULT_COMPONENT = "default"
LEGACY_NAME = "celery"  # the name a component built from a legacy URL gets

# Legacy broker schemes and the capa URL scheme serving them.
BROKER_SCHEMES: dict[str, str] = {
    "redis": "redis",
    "rediss": "redis",
    "amqp": "amqp",
    "amqps": "amqps",
    "pyamqp": "amqp",
    "librabbitmq": "amqp",
    "memory": "memory",
    "sqlite": "sqlite",
    "postgres": "postgresql",
    "postgresql": "postgresql",
    "nats": "nats",
}

_runtimes: dict[tuple[int, str, str], Runtime] = {}
_runtimes_lock = threading.Lock()


def _clean_driver(url: str) -> str:
    """``postgresql+psycopg2://...`` -> ``postgresql://...`` (SQLAlchemy driver suffixes)."""
    scheme, sep, rest = url.partition("://")
    if sep and "+" in scheme:
        scheme = scheme.split("+", 1)[0]
    return f"{scheme}{sep}{rest}"


def legacy_component_url(url: str, *, role: str = "broker") -> str:
    """The capa component URL serving a legacy kombu/Celery URL; an unsupported one fails."""
    url = _clean_driver(url.strip())
    scheme = url.partition("://")[0].lower()
    target = BROKER_SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(BROKER_SCHEMES))
        raise SettingsError(
            "Celery/kombu settings", f"{role} url {url!r}",
            f"the scheme {scheme!r} has no capa component",
            f"use capa://<component> or one of {known}",
        )
    parts = urlsplit(url)
    if target in ("amqp", "amqps"):
        # pyamqp:// and librabbitmq:// are kombu's names for the same server protocol.
        parts = parts._replace(scheme=target)
    return urlunsplit(parts) if parts.scheme != scheme else url


def broker_url(url: str | None) -> str:
    """Map a Celery/kombu broker URL onto the capa transport.

    None or "" -> the embedded default; ``capa://...`` and ``capa+...`` stay; ``sqla+X`` and
    ``X`` become ``capa+X``. Failover lists (``a;b``) are mapped entry by entry.
    """
    if not url:
        return f"{CAPA_SCHEME}://{DEFAULT_COMPONENT}"
    if ";" in url:
        return ";".join(broker_url(part) for part in url.split(";") if part.strip())
    url = url.strip()
    if url.startswith((f"{CAPA_SCHEME}://", CAPA_PREFIX)):
        return url
    if url.startswith("sqla+"):
        url = url[len("sqla+"):]
    return CAPA_PREFIX + legacy_component_url(url)


def _fork_safe_key(kind: str, url: str) -> tuple[int, str, str]:
    # Connections do not survive fork(): a pool child builds its own Runtime.
    return (os.getpid(), kind, url)


def settings_runtime() -> Runtime:
    """The Runtime of the working directory's capa settings (capa.toml, CAPA_*), per process."""
    # Keyed by directory too: capa.toml and the embedded default's file are the cwd's.
    key = _fork_safe_key("settings", os.getcwd())
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = Runtime.from_settings()
        return runtime


def legacy_metadata(url: str, transport_options: Mapping[str, Any]) -> dict[str, str]:
    """Component settings that carry a legacy transport's behaviour over to capa.

    On RabbitMQ, kombu's py-amqp transport waits for publisher confirms only with the transport
    option ``confirm_publish`` (Celery leaves it off), and declares classic queues unless told
    otherwise (``queue_type``, which capa's Celery app sets from ``task_default_queue_type``).
    """
    if url.partition("://")[0].lower() in ("amqp", "amqps"):
        confirm = bool(transport_options.get("confirm_publish", False))
        return {
            "publisherConfirm": "true" if confirm else "false",
            "queueType": str(transport_options.get("queue_type") or "classic"),
        }
    return {}


def legacy_runtime(block: str, url: str, metadata: Mapping[str, str] | None = None) -> Runtime:
    """A Runtime whose ``block`` component named ``celery`` is built from a legacy URL."""
    extra = dict(metadata or {})
    key = _fork_safe_key(block, url + repr(sorted(extra.items())))
    with _runtimes_lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            document: dict[str, Any] = {block: {LEGACY_NAME: {**extra, "url": url}}}
            runtime = _runtimes[key] = Runtime.from_mapping(document)
        return runtime


def resolve(
    block: str, target: str, metadata: Mapping[str, str] | None = None
) -> tuple[Runtime, str]:
    """(runtime, component name) for ``capa://NAME`` style names or a legacy component URL.

    ``metadata`` adds settings to a component built from a legacy URL.
    """
    if "://" in target:
        return legacy_runtime(block, target, metadata), LEGACY_NAME
    return settings_runtime(), target or DEFAULT_COMPONENT


def configured(block: str) -> list[str]:
    """Names of the ``block`` components in the working directory's settings."""
    return settings_runtime().settings.names(block)
