"""kombu's public names on the capa transport: change the import line, keep the code.

``Connection`` is kombu's, with one difference: its URL is mapped onto the capa transport. A
legacy URL (``redis://``, ``amqp://``, ``memory://``, ``sqla+sqlite:///x.db``...) becomes the
capa component of the same type, ``capa://NAME`` names a configured component, and no URL at all
means the embedded default. Everything else (Exchange, Queue, Producer, Consumer, SimpleQueue,
serialization) is kombu itself running on that transport.
"""

from __future__ import annotations

import inspect
from typing import Any

import kombu as _kombu
from kombu import (
    Consumer,
    Exchange,
    Message,
    Producer,
    Queue,
    binding,
    connections,
    disable_insecure_serializers,
    enable_insecure_serializers,
    eventloop,
    parse_url,
    producers,
    uuid,
)
from kombu.simple import SimpleBuffer, SimpleQueue
from kombu.transport import TRANSPORT_ALIASES

from . import runtimes

TRANSPORT = "capa_compat.kombu.transport:Transport"


def install() -> None:
    """Register the ``capa`` transport alias with kombu (idempotent)."""
    TRANSPORT_ALIASES.setdefault(runtimes.CAPA_SCHEME, TRANSPORT)


install()


def capa_url(
    hostname: Any = None, transport: Any = None, userid: str | None = None,
    password: str | None = None, port: int | None = None, virtual_host: str | None = None,
) -> Any:
    """The capa URL a kombu Connection's arguments stand for (see the module docstring)."""
    if transport not in (None, runtimes.CAPA_SCHEME) and isinstance(transport, str):
        # Connection("host", transport="redis"): build the URL kombu would have built.
        auth = f"{userid or ''}:{password}@" if password else (f"{userid}@" if userid else "")
        host = "" if hostname in (None, "localhost") and transport == "memory" else hostname
        host = host or ""
        where = f"{host}:{port}" if port else host
        vhost = f"/{virtual_host}" if virtual_host else ""
        return runtimes.broker_url(f"{transport}://{auth}{where}{vhost}")
    if transport == runtimes.CAPA_SCHEME:
        return hostname
    if hostname is None or hostname == "localhost":
        return runtimes.broker_url(None)
    if isinstance(hostname, str) and "://" in hostname:
        return runtimes.broker_url(hostname)
    if isinstance(hostname, list | tuple):
        return [capa_url(h) for h in hostname]
    return hostname


class Connection(_kombu.Connection):  # type: ignore[misc]
    """kombu.Connection on the capa transport; legacy URLs map onto capa components."""

    def __init__(
        self, hostname: Any = "localhost", userid: Any = None, password: Any = None,
        virtual_host: Any = None, port: Any = None, insist: bool = False, ssl: Any = False,
        transport: Any = None, connect_timeout: float = 5, transport_options: Any = None,
        login_method: Any = None, uri_prefix: Any = None, heartbeat: float = 0,
        failover_strategy: Any = "round-robin", alternates: Any = None,
        credential_provider: Any = None, **kwargs: Any,
    ) -> None:
        url = capa_url(hostname, transport, userid, password, port, virtual_host)
        if url is not hostname:
            transport = None
        if alternates:
            alternates = [capa_url(a) for a in alternates]
        super().__init__(
            url, userid, password, virtual_host, port, insist, ssl, transport,
            connect_timeout, transport_options, login_method, uri_prefix, heartbeat,
            failover_strategy, alternates, credential_provider, **kwargs,
        )


# Same call signature as upstream's, annotations included, for tools that compare them.
Connection.__init__.__signature__ = inspect.signature(_kombu.Connection.__init__)  # type: ignore[attr-defined]

BrokerConnection = Connection

__all__ = [
    "BrokerConnection",
    "Connection",
    "Consumer",
    "Exchange",
    "Message",
    "Producer",
    "Queue",
    "SimpleBuffer",
    "SimpleQueue",
    "binding",
    "connections",
    "disable_insecure_serializers",
    "enable_insecure_serializers",
    "eventloop",
    "install",
    "parse_url",
    "producers",
    "uuid",
]
