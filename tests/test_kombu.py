"""capa_compat.kombu against real servers: SimpleQueue, Producer/Consumer acks, exchanges."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu.exceptions import ContentDisallowed
from tests.celery_apps.harness import delete_rabbitmq_queues
from tests.conformance.support import settled
from tests.services import require

from capa_compat.kombu import (
    Connection,
    Consumer,
    Exchange,
    Producer,
    Queue,
    SimpleBuffer,
    SimpleQueue,
)
from capa_compat.kombu.runtimes import broker_url
from capa_core import ComponentNotFound, ComponentUnavailable

BACKENDS = ["memory", "sqlite", "redis", "postgres", "rabbitmq"]


def url_for(backend: str, tmp: Path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqla+sqlite:///{tmp / 'kombu.db'}"
    if backend == "redis":
        return require("redis") + "/3"
    return require(backend)


RABBITMQ_PREFIXES: set[str] = set()


@pytest.fixture(scope="module", autouse=True)
def _remove_rabbitmq_queues() -> Iterator[None]:
    yield
    delete_rabbitmq_queues(RABBITMQ_PREFIXES)


@pytest.fixture(params=BACKENDS)
def conn(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Connection]:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    if request.param == "rabbitmq":
        RABBITMQ_PREFIXES.add(f":{prefix}")
    with Connection(
        url_for(request.param, tmp_path), transport_options={"topic_prefix": prefix}
    ) as connection:
        yield connection


def drain_until(conn: Connection, done: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:  # type: ignore[operator]
        with contextlib.suppress(TimeoutError):
            conn.drain_events(timeout=0.2)


def test_simple_queue_round_trip(conn: Connection) -> None:
    queue = conn.SimpleQueue("simple")
    assert isinstance(queue, SimpleQueue)
    queue.put({"hello": "world", "n": [1, 2]})
    message = queue.get(timeout=5)
    assert message.payload == {"hello": "world", "n": [1, 2]}
    assert message.content_type == "application/json"  # JSON unless asked otherwise
    message.ack()
    with pytest.raises(queue.Empty):
        queue.get(timeout=0.3)
    queue.put("again")
    message = queue.get(timeout=5)
    message.requeue()
    message = queue.get(timeout=5)
    assert message.payload == "again"
    assert message.delivery_info["redelivered"] is True
    message.ack()
    queue.close()


def test_queue_sizes_count_what_no_consumer_holds(conn: Connection) -> None:
    queue = conn.SimpleQueue("sized")
    for n in range(5):
        queue.put(n)
    assert settled(queue.qsize, 5) == 5
    assert len(queue) == 5
    _, message_count, _ = queue.queue.queue_declare(passive=True)
    assert message_count == 5
    queue.consumer.qos(prefetch_count=1)
    first = queue.get(timeout=5)
    assert settled(queue.qsize, 4) == 4  # the one in hand (a prefetch of one) does not count
    assert queue.clear() == 4
    assert settled(queue.qsize, 0) == 0
    first.ack()
    queue.close()


def test_simple_buffer_and_get_nowait(conn: Connection) -> None:
    buffer = conn.SimpleBuffer("buffer")
    assert isinstance(buffer, SimpleBuffer)
    with pytest.raises(buffer.Empty):
        buffer.get_nowait()
    buffer.put(1)
    deadline = time.monotonic() + 5
    while True:
        try:
            assert buffer.get_nowait().payload == 1  # no_ack: nothing to settle
            break
        except buffer.Empty:
            assert time.monotonic() < deadline
    buffer.close()


def test_producer_consumer_manual_ack(conn: Connection) -> None:
    exchange = Exchange("work", type="direct")
    queue = Queue("work", exchange, routing_key="work")
    channel = conn.channel()
    producer = Producer(channel, exchange=exchange, routing_key="work")
    for n in range(5):
        producer.publish({"n": n}, declare=[queue])
    seen: list[int] = []
    requeued: list[int] = []

    def on_message(body: dict[str, int], message: object) -> None:
        if body["n"] == 2 and not requeued:
            requeued.append(body["n"])
            message.requeue()  # type: ignore[attr-defined]
            return
        seen.append(body["n"])
        message.ack()  # type: ignore[attr-defined]

    with Consumer(channel, [queue], callbacks=[on_message], accept=["json"]):
        drain_until(conn, lambda: len(seen) == 5)
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert requeued == [2]
    # Nothing is left: every message was acked.
    leftover = Consumer(channel, [queue], callbacks=[lambda b, m: seen.append(-1)])
    with leftover, pytest.raises(TimeoutError):
        conn.drain_events(timeout=0.5)


def test_messages_requeued_after_a_cancel_come_back_in_their_order(
    conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelling a consumer while its fetcher waits on the queue, then requeueing what it
    delivered: the wait must not take the first requeued message and hand it back behind the
    second (on a busy machine, where taking it in takes a while)."""
    from capa_compat.kombu import transport

    def slowly(accept: Any) -> Any:
        def accept_slowly(channel: Any, queue: str, *args: Any, **kwargs: Any) -> Any:
            if queue not in channel._active_queues:
                time.sleep(0.05)
            return accept(channel, queue, *args, **kwargs)
        return accept_slowly

    monkeypatch.setattr(transport.Channel, "accept", slowly(transport.Channel.accept))
    queue = Queue("requeued", Exchange("requeued"), routing_key="requeued")
    producer = Producer(conn.channel(), exchange=queue.exchange, routing_key="requeued")
    for n in range(2):
        producer.publish({"n": n}, declare=[queue])
    held: list[Any] = []
    consumer = Consumer(conn, [queue], callbacks=[lambda body, m: held.append(m)],
                        accept=["json"])
    with consumer:
        drain_until(conn, lambda: len(held) == 2)
        time.sleep(0.1)  # the fetcher is now waiting on the queue for more
    for message in held:
        message.requeue()
    time.sleep(0.3)  # a consumer comes back later (what a late pull took goes back first)
    seen: list[int] = []

    def on_message(body: dict[str, int], message: Any) -> None:
        seen.append(body["n"])
        message.ack()

    consumer.callbacks = [on_message]
    with consumer:
        drain_until(conn, lambda: len(seen) == 2)
    assert seen == [0, 1]


def test_consuming_on_kombus_event_loop(conn: Connection) -> None:
    """Celery's worker consumes on kombu's Hub: fetched messages wake it through a pipe."""
    from kombu.asynchronous import Hub

    hub = Hub()
    queue = Queue("evented", Exchange("evented"), routing_key="evented")
    producer = Producer(conn.channel(), exchange=queue.exchange, routing_key="evented")
    producer.publish({"n": 0}, declare=[queue])  # waiting before the hub is registered
    seen: list[int] = []

    def on_message(body: dict[str, int], message: object) -> None:
        seen.append(body["n"])
        message.ack()  # type: ignore[attr-defined]

    assert conn.is_evented
    conn.register_with_event_loop(hub)
    transport = conn.transport
    reader = transport._wakeup[0]
    try:
        with Consumer(conn.channel(), [queue], callbacks=[on_message], accept=["json"]):
            loop = hub.create_loop()
            for n in range(1, 4):
                producer.publish({"n": n})
            deadline = time.monotonic() + 10
            while len(seen) < 4 and time.monotonic() < deadline:
                next(loop)
        assert seen == [0, 1, 2, 3]
    finally:
        hub.close()
        conn.transport.unregister_from_event_loop(conn.connection, hub)
    assert transport._wakeup is None
    with pytest.raises(OSError):
        os.fstat(reader)  # the pipe is closed


def test_a_channel_with_a_full_prefetch_does_not_hold_up_another(conn: Connection) -> None:
    """One thread fetches for every channel of a connection (a worker's tasks and its remote
    control): while one channel holds all its prefetch allows, the other still receives."""
    busy = Queue("busy", Exchange("busy"), routing_key="busy")
    other = Queue("other", Exchange("other"), routing_key="other")
    producer = Producer(conn.channel())
    for n in range(2):
        producer.publish({"n": n}, exchange=busy.exchange, routing_key="busy", declare=[busy])
    held: list[Any] = []
    got: list[str] = []
    busy_channel = conn.channel()
    busy_channel.basic_qos(0, 1, False)  # one unacked message at a time
    with Consumer(busy_channel, [busy], callbacks=[lambda b, m: held.append(m)]), Consumer(
        conn.channel(), [other], callbacks=[lambda b, m: (got.append(b), m.ack())]
    ):
        drain_until(conn, lambda: len(held) == 1)
        drain_until(conn, lambda: len(held) > 1, timeout=0.5)
        assert len(held) == 1  # the prefetch of one is full
        producer.publish("hello", exchange=other.exchange, routing_key="other", declare=[other])
        started = time.monotonic()
        drain_until(conn, lambda: got == ["hello"])
        assert got == ["hello"] and time.monotonic() - started < 1.0
        held[0].ack()
        drain_until(conn, lambda: len(held) == 2)  # room again: the second one comes
        assert [m.payload["n"] for m in held] == [0, 1]
        held[1].ack()


def test_unacked_messages_return_when_the_channel_closes(conn: Connection) -> None:
    queue = Queue("unacked", Exchange("unacked"), routing_key="unacked")
    with conn.channel() as first:
        Producer(first).publish("keep me", exchange=queue.exchange, routing_key="unacked",
                                declare=[queue])
        message = queue(first).get(no_ack=False)
        deadline = time.monotonic() + 5
        while message is None and time.monotonic() < deadline:
            message = queue(first).get(no_ack=False)
        assert message is not None and message.payload == "keep me"
    with conn.channel() as second:
        again = None
        deadline = time.monotonic() + 5
        while again is None and time.monotonic() < deadline:
            again = queue(second).get(no_ack=False)
        assert again is not None and again.payload == "keep me"
        again.ack()


def test_fanout_reaches_every_bound_queue(conn: Connection) -> None:
    fanout = Exchange("news", type="fanout")
    queues = [Queue("news-a", fanout), Queue("news-b", fanout)]
    channel = conn.channel()
    for queue in queues:
        queue(channel).declare()
    Producer(channel).publish({"headline": 1}, exchange=fanout, declare=[fanout])
    got: list[tuple[str, object]] = []

    def receiver(name: str):  # type: ignore[no-untyped-def]
        def on_message(body: object, message: object) -> None:
            got.append((name, body))
            message.ack()  # type: ignore[attr-defined]
        return on_message

    consumers = [Consumer(channel, [q], callbacks=[receiver(q.name)]) for q in queues]
    for consumer in consumers:
        consumer.consume()
    drain_until(conn, lambda: len(got) == 2)
    for consumer in consumers:
        consumer.cancel()
    assert sorted(got) == [("news-a", {"headline": 1}), ("news-b", {"headline": 1})]


def test_deleted_and_auto_delete_queues_stop_collecting(conn: Connection) -> None:
    fanout = Exchange("alerts", type="fanout")
    anchor, kept = Queue("alerts-anchor", fanout), Queue("alerts-kept", fanout)
    passing = Queue("alerts-passing", fanout, auto_delete=True)  # as `celery events` declares
    channel = conn.channel()
    for queue in (anchor, kept):
        queue(channel).declare()
    listener = Consumer(channel, [passing], callbacks=[lambda body, message: message.ack()])
    listener.consume()
    listener.cancel()  # its last consumer gone, the auto-delete queue is deleted
    producer = Producer(channel, exchange=fanout)
    producer.publish({"n": 1}, declare=[fanout])
    kept(channel).delete()
    producer.publish({"n": 2})
    for queue in (passing, kept):  # declared anew: what was sent meanwhile never reached them
        queue(channel).declare()
        assert queue(channel).get(no_ack=True) is None, queue.name
    got = []
    while (message := anchor(channel).get(no_ack=True)) is not None or len(got) < 2:
        if message is not None:
            got.append(message.payload)
    assert got == [{"n": 1}, {"n": 2}]  # the queue that stayed lost nothing


def test_cancelling_an_auto_delete_queue_works_while_its_group_cannot_be_deleted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with Connection("memory://") as connection:
        channel = connection.channel()
        pubsub = channel.pubsub

        def unreachable(*args: object, **kwargs: object) -> None:
            raise ComponentUnavailable("pubsub", "default", "the server went away")

        monkeypatch.setattr(pubsub, "delete_group", unreachable)
        queue = Queue(f"passing-{uuid.uuid4().hex[:6]}", auto_delete=True)
        consumer = Consumer(channel, [queue], callbacks=[lambda body, message: None])
        consumer.consume()
        consumer.cancel()  # must not raise: the group stays, and the log says so
    assert "its group stays" in caplog.text


def test_topic_exchange_routes_by_pattern(conn: Connection) -> None:
    topic = Exchange("events", type="topic")
    errors = Queue("errors", topic, routing_key="*.error")
    everything = Queue("everything", topic, routing_key="#")
    channel = conn.channel()
    errors(channel).declare()
    everything(channel).declare()
    producer = Producer(channel, exchange=topic)
    producer.publish("disk full", routing_key="disk.error")
    producer.publish("all good", routing_key="disk.info")
    got: dict[str, list[object]] = {"errors": [], "everything": []}
    consumers = [
        Consumer(channel, [q], callbacks=[lambda b, m, n=q.name: (got[n].append(b), m.ack())])
        for q in (errors, everything)
    ]
    for consumer in consumers:
        consumer.consume()
    drain_until(conn, lambda: len(got["everything"]) == 2)
    drain_until(conn, lambda: False, timeout=0.5)  # anything misrouted would show up now
    assert got["errors"] == ["disk full"]
    assert sorted(got["everything"]) == ["all good", "disk full"]  # type: ignore[type-var]


def test_priority_queue_serves_higher_priorities_first(conn: Connection) -> None:
    queue = Queue("jobs", Exchange("jobs"), routing_key="jobs", max_priority=9)
    channel = conn.channel()
    producer = Producer(channel, exchange=queue.exchange, routing_key="jobs")
    for n in range(3):
        producer.publish({"n": n, "p": 1}, priority=1, declare=[queue])
    producer.publish({"n": 9, "p": 9}, priority=9, declare=[queue])
    time.sleep(0.3)  # let a server backend take them all in before we look
    got: list[int] = []
    channel.basic_qos(0, 1, False)
    with Consumer(channel, [queue], callbacks=[lambda b, m: (got.append(b["p"]), m.ack())]):
        drain_until(conn, lambda: len(got) == 4)
    assert got[0] == 9 and sorted(got) == [1, 1, 1, 9]


def test_pickle_only_when_accepted(conn: Connection) -> None:
    queue = conn.SimpleQueue("pickled", serializer="pickle")
    queue.put({1, 2, 3})
    with pytest.raises(ContentDisallowed):
        queue.get(timeout=5)  # pickle is refused unless the consumer accepts it
    queue.close()


def test_legacy_urls_map_onto_capa() -> None:
    assert broker_url(None) == "capa://default"
    assert broker_url("capa://bus") == "capa://bus"
    assert broker_url("redis://h:6379/3") == "capa+redis://h:6379/3"
    assert broker_url("pyamqp://guest@h//") == "capa+amqp://guest@h//"
    assert broker_url("sqla+sqlite:///x.db") == "capa+sqlite:///x.db"
    assert broker_url("sqla+postgresql+psycopg2://u@h/db") == "capa+postgresql://u@h/db"
    assert broker_url("redis://a;redis://b") == "capa+redis://a;capa+redis://b"
    with pytest.raises(ValueError, match="sqs"):
        broker_url("sqs://key:secret@")
    assert Connection("memory://").as_uri().startswith("capa+memory")
    assert Connection(transport="memory").as_uri().startswith("capa+memory")


def test_unknown_component_lists_the_configured_ones(in_tmp: Path) -> None:
    with Connection("capa://nope") as connection, pytest.raises(ComponentNotFound) as info:
        connection.connect()
    assert "'default'" in str(info.value)
