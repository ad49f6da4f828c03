"""The components the conformance suite runs against: one Target per backend.

A backend joins the suite by adding a Target here; the mixins in this package read its blocks and
build a Runtime per test, isolated by a unique app id (state, lock, configuration) and unique
topic names (pub/sub).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.services import require


@dataclass(frozen=True)
class Target:
    name: str
    blocks: frozenset[str]
    # (unique token, a private temporary directory) -> the component's settings table
    settings: Callable[[str, Path], dict[str, Any]]
    service: str | None = None  # a server from tests/services.py that must be reachable

    def table(self, unique: str, tmp: Path) -> dict[str, Any]:
        if self.service is not None:
            require(self.service)
        return self.settings(unique, tmp)


ALL = frozenset({"state", "pubsub", "configuration", "lock"})

TARGETS: list[Target] = [
    Target("memory", ALL, lambda u, tmp: {"url": f"memory://{u}"}),
    Target("sqlite", ALL, lambda u, tmp: {"url": f"sqlite:///{tmp / 'capa.db'}"}),
    # Targets of the server backends are added below, one line each.
    Target("redis", ALL, lambda u, tmp: {"url": "redis://127.0.0.1:6379/1", "keyPrefix": f"t-{u}:"}, service="redis"),  # noqa: E501
    Target("rabbitmq", frozenset({"pubsub"}), lambda u, tmp: {"url": "amqp://guest:guest@127.0.0.1:5672/", "exchange": f"capa.test.{u}", "queueExpiry": 60}, service="rabbitmq"),  # noqa: E501
    # The settings Celery's amqp:// URL maps to: classic queues, publish without waiting.
    Target("rabbitmq-classic", frozenset({"pubsub"}), lambda u, tmp: {"url": "amqp://guest:guest@127.0.0.1:5672/", "exchange": f"capa.test.{u}", "queueExpiry": 60, "queueType": "classic", "publisherConfirm": False}, service="rabbitmq"),  # noqa: E501
    Target("postgres", ALL, lambda u, tmp: {"url": "postgresql://postgres@127.0.0.1:5432/test", "table_prefix": "capa_conformance_"}, service="postgres"),  # noqa: E501  (shared tables kept small: tests isolate by app id and topic)
    Target("nats", frozenset({"pubsub"}), lambda u, tmp: {"url": "nats://127.0.0.1:4222", "stream": f"capa-test-{u}", "storage": "memory", "maxAge": 600}, service="nats"),  # noqa: E501
]


def targets_for(block: str) -> list[Target]:
    return [t for t in TARGETS if block in t.blocks]
