"""Finds the component class for a type name or URL: an alias table plus entry points."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from .errors import UnknownComponentType
from .spi import Component

ENTRY_POINT_GROUP = "capa.components"

BLOCKS = ("state", "pubsub", "configuration", "lock", "secrets")

_M = "capa_core.components."
ALIASES: dict[str, str] = {
    "state.memory": _M + "memory:MemoryState",
    "pubsub.memory": _M + "memory:MemoryPubSub",
    "configuration.memory": _M + "memory:MemoryConfiguration",
    "lock.memory": _M + "memory:MemoryLock",
    "state.sqlite": _M + "sqlite:SqliteState",
    "pubsub.sqlite": _M + "sqlite:SqlitePubSub",
    "configuration.sqlite": _M + "sqlite:SqliteConfiguration",
    "lock.sqlite": _M + "sqlite:SqliteLock",
    "configuration.file": _M + "file:FileConfiguration",
    "secrets.file": _M + "file:FileSecrets",
    "configuration.env": _M + "env:EnvConfiguration",
    "secrets.env": _M + "env:EnvSecrets",
    "state.redis": _M + "redis:RedisState",
    "pubsub.redis": _M + "redis:RedisPubSub",
    "configuration.redis": _M + "redis:RedisConfiguration",
    "lock.redis": _M + "redis:RedisLock",
    "state.postgres": _M + "postgres:PostgresState",
    "pubsub.postgres": _M + "postgres:PostgresPubSub",
    "configuration.postgres": _M + "postgres:PostgresConfiguration",
    "lock.postgres": _M + "postgres:PostgresLock",
    "pubsub.rabbitmq": _M + "rabbitmq:RabbitMQPubSub",
    "pubsub.nats": _M + "nats:NatsPubSub",
}

# Dapr's component type names, so Dapr component files resolve to the same classes.
DAPR_TYPES: dict[str, str] = {
    "state.in-memory": "state.memory",
    "pubsub.in-memory": "pubsub.memory",
    "lock.in-memory": "lock.memory",
    "state.postgresql": "state.postgres",
    "configuration.postgresql": "configuration.postgres",
    "pubsub.jetstream": "pubsub.nats",
    "secretstores.local.file": "secrets.file",
    "secretstores.local.env": "secrets.env",
}

URL_SCHEMES: dict[str, str] = {
    "memory": "memory",
    "sqlite": "sqlite",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "postgres": "postgres",
    "postgresql": "postgres",
    "amqp": "rabbitmq",
    "amqps": "rabbitmq",
    "nats": "nats",
    "tls": "nats",
    "file": "file",
    "env": "env",
}


def type_for_url(block: str, url: str) -> str:
    """The component type a URL names for ``block``: ``redis://...`` -> ``state.redis``."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:  # e.g. "redis://[::1" (an unclosed IPv6 host): name what it says
        scheme = url.partition("://")[0].lower() if "://" in url else ""
    kind = URL_SCHEMES.get(scheme)
    if kind is None:
        schemes = [f"{s}://" for s in URL_SCHEMES]
        raise UnknownComponentType(f"{scheme}://" if scheme else url, schemes)
    return f"{block}.{kind}"


def normalize_type(type_name: str) -> str:
    type_name = type_name.strip().lower()
    if type_name.startswith("secretstores.") and type_name not in DAPR_TYPES:
        type_name = "secrets." + type_name.removeprefix("secretstores.")
    return DAPR_TYPES.get(type_name, type_name)


@functools.cache
def _entry_points() -> dict[str, str]:
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_types() -> list[str]:
    return sorted({*ALIASES, *_entry_points()})


def resolve(type_name: str) -> type[Component]:
    """The class registered for a component type; UnknownComponentType lists what exists."""
    name = normalize_type(type_name)
    target = _entry_points().get(name) or ALIASES.get(name)
    if target is None:
        raise UnknownComponentType(type_name, known_types())
    module_name, _, attr = target.partition(":")
    cls: type[Component] = getattr(importlib.import_module(module_name), attr)
    return cls
