"""Reaching the real servers of the machine: address, a check, and what to do when one is down.

In CI (CI=true) a server that cannot be reached fails the test; elsewhere the test is skipped with
the command that starts the server (../shared/SERVICES.md).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Service:
    name: str
    host: str
    port: int
    url: str
    start: str


SERVICES = {
    "redis": Service(
        "Redis", "127.0.0.1", 6379, "redis://127.0.0.1:6379",
        'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
        "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
    ),
    "postgres": Service(
        "PostgreSQL", "127.0.0.1", 5432, "postgresql://postgres@127.0.0.1:5432/test",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    ),
    "rabbitmq": Service(
        "RabbitMQ", "127.0.0.1", 5672, "amqp://guest:guest@127.0.0.1:5672//",
        "rabbitmq-server -detached",
    ),
    "nats": Service(
        "NATS", "127.0.0.1", 4222, "nats://127.0.0.1:4222",
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
        "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log",
    ),
}


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str) -> str:
    """The URL of server ``name``; fails (CI) or skips (elsewhere) when it is down."""
    service = SERVICES[name]
    if reachable(service.host, service.port):
        return service.url
    message = (
        f"{service.name} is not reachable on {service.host}:{service.port}; "
        f"start it with: {service.start}"
    )
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)
