"""kombu's own SimpleQueue and SimpleBuffer tests (t/unit/test_simple.py of its sdist) on
capa_compat.kombu, on the embedded default, Redis and RabbitMQ.

kombu runs them on its in-memory transport; here each test gets a capa Connection under a topic
prefix of its own (the tests' queue names are fixed). On RabbitMQ the connection waits for
publisher confirms (``confirm_publish``): the tests count a queue right after putting into it,
which an unconfirmed publish does not promise on RabbitMQ, natively either.
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

upstream = upstream_module("kombu", "t/unit/test_simple.py", "kombu_upstream_test_simple")

BACKENDS = ["sqlite", "redis", "rabbitmq"]
RABBITMQ_PREFIXES: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def _remove_rabbitmq_queues() -> Iterator[None]:
    yield
    delete_rabbitmq_queues(RABBITMQ_PREFIXES)


def connection_for(backend: str) -> Connection:
    prefix = f"ks{uuid.uuid4().hex[:10]}."
    options: dict[str, Any] = {"topic_prefix": prefix}
    if backend == "sqlite":
        return Connection("capa://", transport_options=options)  # in the test's directory
    if backend == "redis":
        return Connection(require("redis") + "/5", transport_options=options)
    RABBITMQ_PREFIXES.add(prefix)
    return Connection(require("rabbitmq"), transport_options={**options, "confirm_publish": True})


class OnCapa:
    """Replaces the suite's set-up (a memory transport) with a capa connection per backend."""

    connection: Connection

    def setup_method(self) -> None:
        """The connection comes from the fixture below."""

    def teardown_method(self) -> None:
        """The fixture below closes the connection."""

    @pytest.fixture(autouse=True, params=BACKENDS)
    def _connection(
        self, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[None]:
        monkeypatch.chdir(tmp_path)
        self.connection = connection_for(request.param)
        self.connection.default_channel.exchange_declare("amq.direct")
        try:
            yield
        finally:
            self.connection.close()


class TestSimpleQueue(OnCapa, upstream.test_SimpleQueue):  # type: ignore[misc,name-defined]
    pass


class TestSimpleBuffer(OnCapa, upstream.test_SimpleBuffer):  # type: ignore[misc,name-defined]
    pass
