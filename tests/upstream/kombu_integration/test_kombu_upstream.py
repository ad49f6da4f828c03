"""kombu's own integration mixins (t/integration/common.py of its sdist) on capa_compat.kombu.

The mixins need only a ``connection`` fixture (and ``invalid_connection``); ours gives a capa
Connection per backend, each test under a topic prefix of its own so the mixins' fixed queue
names ("test", "simple_queue_test"...) never meet across tests or runs. The mixins kombu runs
for its own virtual (Redis) transport run here; BaseTimeToLive, which kombu runs for py-amqp
only, does not: per-message TTLs are not enforced (capa_compat/kombu/transport.py, Limits).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.celery_apps.harness import delete_rabbitmq_queues
from tests.services import require
from tests.upstream.sdist import upstream_module

from capa_compat.kombu import Connection

common = upstream_module("kombu", "t/integration/common.py", "kombu_upstream_common")

BACKENDS = ["sqlite", "redis", "rabbitmq"]


def broker_for(backend: str) -> str:
    if backend == "sqlite":
        return "capa://"  # the embedded default, in the test's working directory
    if backend == "redis":
        return require("redis") + "/5"
    return require("rabbitmq")


@pytest.fixture(params=BACKENDS)
def connection(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Connection]:
    monkeypatch.chdir(tmp_path)
    prefix = f"ku{uuid.uuid4().hex[:10]}."
    made = Connection(broker_for(request.param),
                      transport_options={"topic_prefix": prefix, "capa_backend": request.param})
    try:
        yield made
    finally:
        made.release()
        if request.param == "rabbitmq":
            delete_rabbitmq_queues({prefix})


@pytest.fixture
def invalid_connection() -> Connection:
    return Connection("redis://127.0.0.1:1")  # nothing listens on port 1


class TestBasicFunctionality(common.BasicFunctionality):  # type: ignore[misc,name-defined]
    pass


class TestExchangeTypes(common.BaseExchangeTypes):  # type: ignore[misc,name-defined]
    pass


class TestPriority(common.BasePriority):  # type: ignore[misc,name-defined]
    """AMQP's order (higher numbers first), as py-amqp; its checks expect one drain_events call
    to deliver every message the broker holds for the consumer. A virtual transport (ours, like
    kombu's Redis transport) delivers what has been fetched when the call wakes, so here one
    call goes on draining until nothing more comes within a fetch round."""

    @pytest.fixture(autouse=True)
    def drain_everything_ready(self, monkeypatch: pytest.MonkeyPatch) -> None:
        original = Connection.drain_events

        def drain_events(self: Connection, **kwargs: Any) -> None:
            original(self, **kwargs)  # the first message, waiting as the caller asked
            while True:
                try:
                    original(self, timeout=0.5)
                except TimeoutError:
                    return

        monkeypatch.setattr(Connection, "drain_events", drain_events)


class TestMessage(common.BaseMessage):  # type: ignore[misc,name-defined]
    pass
