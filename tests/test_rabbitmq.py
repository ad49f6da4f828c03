"""The RabbitMQ pub/sub component on the real broker: settings, confirms, topology, leases, faults.

The generic behaviour is in tests/conformance (the "rabbitmq" target); this file covers what is
particular to RabbitMQ. Every test uses an exchange of its own whose queues expire a few minutes
after the test. Worker processes run this file as a script (``python THIS_FILE ROLE ...``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.support import settled
from tests.role_process import RoleProcess, say
from tests.services import require

from capa_core import Runtime
from capa_core.components.rabbitmq import RabbitMQPubSub, routing_key
from capa_core.errors import ComponentUnavailable, SettingsError
from capa_core.registry import resolve, type_for_url
from capa_core.types import Delivery

URL = "amqp://guest:guest@127.0.0.1:5672/"
EXPIRY = 60  # seconds: the broker deletes a test's queues this long after their last use


def component(exchange: str, **metadata: Any) -> RabbitMQPubSub:
    return RabbitMQPubSub("events", {"url": URL, "exchange": exchange, "queueExpiry": EXPIRY,
                                     **metadata})


@pytest.fixture
def exchange(unique: str) -> str:
    return f"capa.test.rmq.{unique}"


@pytest.fixture
def bus(exchange: str) -> Iterator[RabbitMQPubSub]:
    require("rabbitmq")
    made = component(exchange)
    yield made
    made.close()


def raw_channel() -> Any:
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(URL + "%2F"))
    return connection, connection.channel()


def waiting(queue: str) -> int:
    """Messages ready in ``queue``, asked of the broker directly."""
    connection, channel = raw_channel()
    try:
        return int(channel.queue_declare(queue, passive=True).method.message_count)
    finally:
        connection.close()


# --- settings (no broker needed) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("metadata", "host", "port", "vhost", "user"),
    [
        ({"url": "amqp://guest:guest@127.0.0.1:5672/"}, "127.0.0.1", 5672, "/", "guest"),
        ({"url": "amqp://u:p@broker:5673//"}, "broker", 5673, "/", "u"),
        ({"url": "amqp://u:p@broker/%2F"}, "broker", 5672, "/", "u"),
        ({"url": "amqp://u:p@broker/orders"}, "broker", 5672, "orders", "u"),
        ({"connectionString": "amqp://dapr:pw@mq:5672/"}, "mq", 5672, "/", "dapr"),
        ({"host": "amqp://old:pw@mq:5672/"}, "mq", 5672, "/", "old"),
        ({"hostname": "mq", "port": "5674", "username": "a@b", "password": "p/w:x",
          "vhost": "v/1"}, "mq", 5674, "v/1", "a@b"),
    ],
)
def test_connection_settings_from_urls_and_dapr_metadata(
    metadata: dict[str, Any], host: str, port: int, vhost: str, user: str
) -> None:
    made = RabbitMQPubSub("events", metadata)
    parameters = made.parameters
    assert (parameters.host, parameters.port, parameters.virtual_host) == (host, port, vhost)
    assert parameters.credentials.username == user
    assert made.exchange == "capa.events"
    assert made._link is None  # no thread, no connection until first use


def test_discrete_settings_keep_special_characters_of_the_password() -> None:
    made = RabbitMQPubSub("e", {"hostname": "mq", "username": "u", "password": "p@ss:w/rd%"})
    assert made.parameters.credentials.password == "p@ss:w/rd%"
    assert "p@ss" not in made.address


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ({}, "url"),
        ({"url": "redis://127.0.0.1:6379"}, "url"),
        ({"url": "amqp://h:notaport/"}, "url"),
        ({"url": "amqp://h/?heartbeat=soon"}, "url"),
        ({"url": URL, "reconnectWait": "never"}, "reconnectWait"),
        ({"url": URL, "connectTimeout": "-1"}, "connectTimeout"),
        ({"url": URL, "publishTimeout": True}, "publishTimeout"),
        ({"url": URL, "queueExpiry": "0.5"}, "queueExpiry"),
        ({"url": URL, "exchange": ""}, "exchange"),
        ({"url": URL, "exchange": "x" * 201}, "exchange"),
        ({"url": URL, "queueType": "stream"}, "queueType"),
        ({"url": URL, "publisherConfirm": "sometimes"}, "publisherConfirm"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_setting(
    metadata: dict[str, Any], key: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        RabbitMQPubSub("events", metadata)
    assert caught.value.key == key


def test_durations_accept_numbers_and_units() -> None:
    made = RabbitMQPubSub("e", {"url": URL, "reconnectWait": "500ms", "connectTimeout": 3,
                                "publishTimeout": "1m", "queueExpiry": "2h"})
    assert (made.reconnect_wait, made.connect_timeout, made.publish_timeout) == (0.5, 3.0, 60.0)
    assert made.queue_expiry == 7200.0


def test_amqp_urls_and_dapr_files_pick_this_component(tmp_path: Path) -> None:
    assert resolve(type_for_url("pubsub", "amqp://h/")) is RabbitMQPubSub
    assert resolve(type_for_url("pubsub", "amqps://h/")) is RabbitMQPubSub
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "bus.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bus\nspec:\n"
        "  type: pubsub.rabbitmq\n  version: v1\n  metadata:\n"
        "  - name: connectionString\n    value: amqp://u:p@mq:5672/\n"
        "  - name: reconnectWait\n    value: 3s\n"
    )
    rt = Runtime.from_mapping({"capa": {"components_dir": "components"}}, cwd=tmp_path)
    try:
        bus = rt.pubsub("bus").component
        assert isinstance(bus, RabbitMQPubSub)
        assert (bus.parameters.host, bus.reconnect_wait) == ("mq", 3.0)
    finally:
        rt.close()


def test_topics_never_act_as_wildcards() -> None:
    keys = {routing_key(t) for t in ["a.*", "a.#", "a.b", "a.%2A", "#", "*"]}
    assert len(keys) == 6
    assert not any(set(k.split(".")) & {"*", "#"} for k in keys)


# --- the broker ----------------------------------------------------------------------------------


def test_a_message_goes_out_in_one_write_and_arrives_whole(
    bus: RabbitMQPubSub, exchange: str
) -> None:
    bus.ensure_group("files", "g")
    link = bus._broker()
    transport = link.connection._transport
    writes: list[int] = []
    write = transport.write
    transport.write = lambda data: (writes.append(len(data)), write(data))[1]
    sent = link.connection.frames_sent
    small, large = b"x" * 100, bytes(range(256)) * 2000  # 512 kB: several body frames
    try:
        bus.publish("files", small, {})
    finally:
        transport.write = write
    assert link.connection.frames_sent - sent == 3  # method, header, body...
    assert len(writes) == 1  # ...in one write
    bus.publish("files", large, {"n": "2"})
    got = bus.pull("files", "g", 2, 5.0, 30)
    got += bus.pull("files", "g", 2 - len(got), 5.0, 30)
    assert [d.data for d in got] == [small, large]
    assert got[1].metadata["n"] == "2"
    bus.ack("files", "g", [d.id for d in got])


def test_publish_returns_once_the_broker_holds_the_message(
    bus: RabbitMQPubSub, exchange: str
) -> None:
    bus.ensure_group("orders", "billing")
    for n in range(20):
        bus.publish("orders", f"m{n}".encode(), {"n": str(n)})
    # No consumer anywhere: confirmed means already in the group's queue.
    assert waiting(f"{exchange}:orders:billing") == 20
    failed = bus.bulk_publish("orders", [(str(n), b"bulk", {}) for n in range(30)])
    assert failed == {}
    assert waiting(f"{exchange}:orders:billing") == 50


def test_a_publisher_that_does_not_wait_loses_nothing_on_purge_or_close(exchange: str) -> None:
    require("rabbitmq")
    made = component(exchange, publisherConfirm=False)
    queue = f"{exchange}:orders:g"
    try:
        made.ensure_group("orders", "g")
        for n in range(50):
            made.publish("orders", f"m{n}".encode(), {})
        link = made._broker()
        # They went on the sender channel, not on the publisher's confirm-mode channel.
        assert link.sender is not None and link.sender is not link.publisher
        assert link.publisher is None or link.publisher.sequence == 0
        # A quorum queue may take the last unconfirmed publishes after the purge (the broker
        # orders them behind it): each of the 50 is either purged or still waiting.
        purged = made.purge("orders", "g")
        assert 0 < purged <= 50
        assert settled(lambda: waiting(queue), 50 - purged) == 50 - purged
        for n in range(20):
            made.publish("orders", f"k{n}".encode(), {})
    finally:
        made.close()  # what was written before close reaches the queue
    assert settled(lambda: waiting(queue), 70 - purged) == 70 - purged


def test_delete_group_closes_its_channel_and_deletes_its_queue(
    bus: RabbitMQPubSub, exchange: str
) -> None:
    import pika.exceptions

    bus.ensure_group("t", "g")
    bus.publish("t", b"in hand", {})
    assert len(bus.pull("t", "g", 1, 5.0, 30)) == 1
    link = bus._broker()
    feed_channel = link.feeds[("t", "g")].channel
    assert feed_channel is not None
    bus.delete_group("t", "g")
    deadline = time.monotonic() + 5
    while not feed_channel.channel.is_closed and time.monotonic() < deadline:
        bus.ping()  # turns the component's loop
    assert feed_channel.channel.is_closed
    connection, channel = raw_channel()
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
            channel.queue_declare(f"{exchange}:t:g", passive=True)
    finally:
        connection.close()


def test_classic_queues_count_attempts_in_a_header_of_their_own(exchange: str) -> None:
    require("rabbitmq")
    made = component(exchange, queueType="classic")
    try:
        made.ensure_group("jobs", "g")
        made.publish("jobs", b"retry me", {"x-tenant": "acme"})
        attempts = []
        for _ in range(3):
            [delivery] = made.pull("jobs", "g", 1, 5.0, 30)
            attempts.append(delivery.attempt)
            assert delivery.metadata == {"x-tenant": "acme"}  # the counter stays internal
            made.nack("jobs", "g", [delivery.id], 0.0)
        assert attempts == [1, 2, 3]
    finally:
        made.close()
    connection, channel = raw_channel()
    try:
        declared = channel.queue_declare(f"{exchange}:jobs:g", passive=True)
        assert declared.method.message_count == 1  # counted copies replace the original
    finally:
        connection.close()


def test_messages_are_persistent_with_metadata_in_headers(
    bus: RabbitMQPubSub, exchange: str
) -> None:
    bus.ensure_group("orders", "audit")
    bus.publish("orders", b"{}", {"content-type": "application/json", "x-tenant": "acme"})
    connection, channel = raw_channel()
    try:
        _, properties, body = channel.basic_get(f"{exchange}:orders:audit", auto_ack=True)
    finally:
        connection.close()
    assert body == b"{}"
    assert properties.delivery_mode == 2
    assert properties.content_type == "application/json"
    assert properties.headers["x-tenant"] == "acme"


def test_topic_names_with_wildcard_characters_stay_apart(bus: RabbitMQPubSub) -> None:
    for topic in ("a.*", "a.b", "a.#"):
        bus.ensure_group(topic, "g")
    bus.publish("a.b", b"only-b", {})
    assert [d.data for d in bus.pull("a.b", "g", 10, 1.0, 5)] == [b"only-b"]
    assert bus.pull("a.*", "g", 10, 0.2, 5) == []
    assert bus.pull("a.#", "g", 10, 0.2, 5) == []


def test_the_holding_queue_keeps_early_messages_in_order_for_the_first_group(
    bus: RabbitMQPubSub, exchange: str
) -> None:
    for n in range(5):
        bus.publish("early", str(n).encode(), {})
    assert waiting(f"{exchange}.unrouted:early") == 5
    bus.ensure_group("early", "first")
    assert waiting(f"{exchange}.unrouted:early") == 0
    bus.ensure_group("early", "second")
    got: list[Delivery] = []
    deadline = time.monotonic() + 5
    while len(got) < 5 and time.monotonic() < deadline:  # a pull may return part of a burst
        got += bus.pull("early", "first", 10, 1.0, 5)
    assert [d.data for d in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert [d.attempt for d in got] == [1] * 5
    bus.ack("early", "first", [d.id for d in got])
    assert bus.pull("early", "second", 10, 0.2, 5) == []


def test_a_lease_running_out_in_a_live_process_requeues_with_one_attempt_more(
    bus: RabbitMQPubSub,
) -> None:
    bus.ensure_group("t", "g")
    bus.publish("t", b"x", {})
    [first] = bus.pull("t", "g", 1, 2.0, 0.5)
    assert bus.pull("t", "g", 1, 0.1, 0.5) == []
    [again] = bus.pull("t", "g", 1, 3.0, 5)
    assert (again.data, again.attempt) == (b"x", 2)
    bus.ack("t", "g", [first.id])  # its lease ran out: a late ack of the old hand-out is a no-op
    bus.extend("t", "g", [again.id], 0.5)
    time.sleep(0.3)
    bus.extend("t", "g", [again.id], 0.5)
    time.sleep(0.3)
    assert bus.pull("t", "g", 1, 0.1, 5) == []  # extended: still ours
    bus.ack("t", "g", [again.id])
    assert bus.pull("t", "g", 1, 0.8, 5) == []


def test_a_pull_that_does_not_wait_takes_what_is_ready(bus: RabbitMQPubSub) -> None:
    bus.ensure_group("t", "g")
    for n in range(5):
        bus.publish("t", str(n).encode(), {})
    assert [d.data for d in bus.pull("t", "g", 3, 0, 5)] == [b"0", b"1", b"2"]
    assert [d.data for d in bus.pull("t", "g", 10, 0, 5)] == [b"3", b"4"]
    assert bus.pull("t", "g", 10, 0, 5) == []


def test_nack_with_delay_and_purge(bus: RabbitMQPubSub) -> None:
    bus.ensure_group("t", "g")
    bus.publish("t", b"x", {})
    [first] = bus.pull("t", "g", 1, 2.0, 5)
    nacked = time.monotonic()
    bus.nack("t", "g", [first.id], 0.6)
    [again] = bus.pull("t", "g", 1, 3.0, 5)
    assert time.monotonic() - nacked >= 0.5
    assert again.attempt == 2
    bus.ack("t", "g", [again.id])
    for _ in range(4):
        bus.publish("t", b"p", {})
    assert bus.purge("t", "g") == 4
    assert bus.pull("t", "g", 10, 0.2, 5) == []


def test_a_queue_declared_with_other_arguments_is_a_settings_error(
    exchange: str,
) -> None:
    require("rabbitmq")
    connection, channel = raw_channel()
    try:
        channel.queue_declare(f"{exchange}:t:g", durable=True,
                              arguments={"x-queue-type": "classic", "x-expires": 60_000})
    finally:
        connection.close()
    made = component(exchange)
    try:
        with pytest.raises(Exception) as caught:
            made.ensure_group("t", "g")
        error = made.translate_error(caught.value)  # what the dispatch point raises
        assert isinstance(error, SettingsError)
        assert error.key == "queueType"
        assert "inequivalent arg 'x-queue-type'" in str(error)
        assert "set queueType to the type it has" in str(error)
        made.ensure_group("t", "other")  # the component still works for other groups
    finally:
        made.close()


def test_wrong_credentials_fail_fast_naming_the_url(unique: str) -> None:
    require("rabbitmq")
    rt = Runtime.from_mapping({
        "capa": {"default_url": "memory://"},
        "pubsub": {"bus": {"url": "amqp://guest:wrong@127.0.0.1:5672/", "exchange": unique}},
    })
    try:
        started = time.monotonic()
        with pytest.raises(SettingsError) as caught:
            rt.pubsub("bus").publish("t", 1)
        assert caught.value.key == "url"
        assert "wrong" not in str(caught.value)
        assert time.monotonic() - started < 5
    finally:
        rt.close()


def test_an_unreachable_broker_is_component_unavailable_within_bounds(unique: str) -> None:
    rt = Runtime.from_mapping({
        "capa": {"default_url": "memory://", "retries": 2},
        "pubsub": {"bus": {"url": "amqp://guest:guest@127.0.0.1:1/", "connectTimeout": 1}},
    })
    try:
        started = time.monotonic()
        with pytest.raises(ComponentUnavailable, match=r"127\.0\.0\.1:1/.*[Rr]efused"):
            rt.pubsub("bus").publish("t", 1)
        with pytest.raises(ComponentUnavailable, match=r"127\.0\.0\.1:1/.*[Rr]efused"):
            rt.pubsub("bus").ping()
        assert time.monotonic() - started < 10
    finally:
        rt.close()


def test_close_releases_the_thread_and_later_acks_are_harmless(exchange: str) -> None:
    require("rabbitmq")
    made = component(exchange)
    made.ensure_group("t", "g")
    made.publish("t", b"x", {})
    [delivery] = made.pull("t", "g", 1, 2.0, 30)
    thread = made._broker().runner._helper
    made.close()
    assert not thread.is_alive()
    made.ack("t", "g", [delivery.id])  # nothing to ack on: no error, no new connection
    assert made._link is None
    other = component(exchange)
    try:  # closing handed the message back at once
        [again] = other.pull("t", "g", 1, 3.0, 30)
        assert (again.data, again.attempt) == (b"x", 2)
        other.ack("t", "g", [again.id])
    finally:
        other.close()


# --- other processes -----------------------------------------------------------------------------


def holder(exchange: str, count: str) -> None:
    """Pull ``count`` messages with a long lease, never acknowledge them, wait to be killed."""
    made = component(exchange)
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < int(count) and time.monotonic() < deadline:
        got += made.pull("work", "g", int(count) - len(got), 1.0, 60)
    say("holding", " ".join(d.data.decode() for d in got))
    time.sleep(120)


@pytest.mark.slow
def test_a_killed_consumer_process_messages_go_to_another_consumer(
    bus: RabbitMQPubSub, exchange: str
) -> None:
    """kill -9 a process holding unacked messages (60 s lease): another consumer gets them."""
    bus.ensure_group("work", "g")
    for n in range(3):
        bus.publish("work", f"job-{n}".encode(), {})
    process = RoleProcess(__file__, "holder", exchange, "3")
    try:
        assert process.expect("holding", 30)[1] == ["job-0", "job-1", "job-2"]
        assert bus.pull("work", "g", 10, 0.3, 30) == []  # the live holder has them
        killed_at = time.monotonic()
        os.kill(process.proc.pid, signal.SIGKILL)
        got: list[Any] = []
        while len(got) < 3 and time.monotonic() - killed_at < 10:
            got += bus.pull("work", "g", 3 - len(got), 1.0, 30)
        # The broker requeues as soon as the dead process's connection closes, well before
        # the 60 s lease the holder took.
        assert time.monotonic() - killed_at < 10
        assert sorted(d.data for d in got) == [b"job-0", b"job-1", b"job-2"]
        assert {d.attempt for d in got} == {2}
        bus.ack("work", "g", [d.id for d in got])
    finally:
        process.stop()


def broker_answers() -> bool:
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(URL + "%2F")).close()
        return True
    except Exception:
        return False


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, timeout=60, capture_output=True)


@pytest.mark.slow
def test_broker_restart_loses_no_confirmed_message(unique: str) -> None:
    """Restart the broker's app under a producer and a consumer: every confirmed message arrives.

    A publish that returned was confirmed by the broker (durable quorum queue, persistent
    message), so it must be handled at least once, whatever happened around the restart.
    """
    require("rabbitmq")
    settings = {
        "capa": {"app_id": f"app-{unique}", "default_url": "memory://"},
        "pubsub": {"bus": {"url": URL, "exchange": f"capa.test.restart.{unique}",
                           "queueExpiry": EXPIRY, "reconnectWait": 0.5, "connectTimeout": 3,
                           "lease": 5}},
    }
    producer_rt, consumer_rt = Runtime.from_mapping(settings), Runtime.from_mapping(settings)
    producer, consumer = producer_rt.pubsub("bus"), consumer_rt.pubsub("bus")
    seen: set[int] = set()
    confirmed: list[tuple[int, float]] = []
    failures: list[str] = []
    stop = threading.Event()
    seen_lock = threading.Lock()

    def handle(message: Any) -> None:
        with seen_lock:
            seen.add(int(message.data))

    def produce() -> None:
        n = 0
        while not stop.is_set():
            try:
                producer.publish("orders", n)
            except ComponentUnavailable as exc:  # the broker is away: not confirmed, go on
                failures.append(str(exc))
                time.sleep(0.2)
            else:
                confirmed.append((n, time.monotonic()))
            n += 1
            time.sleep(0.01)

    consumer.subscribe("orders", handle, group="g", batch=10)
    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    restarted_at = 0.0
    try:
        time.sleep(1.5)
        rabbitmqctl("stop_app")
        time.sleep(1.0)
    finally:
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        deadline = time.monotonic() + 30
        while not broker_answers() and time.monotonic() < deadline:
            time.sleep(0.2)
        restarted_at = time.monotonic()
    try:
        time.sleep(3.0)
        stop.set()
        thread.join(20)
        sent = {n for n, _ in confirmed}
        after = [n for n, at in confirmed if at > restarted_at]
        assert after, f"no publish succeeded after the restart; failures: {failures[-3:]}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with seen_lock:
                if sent <= seen:
                    break
            time.sleep(0.2)
        with seen_lock:
            missing = sorted(sent - seen)
        assert not missing, f"{len(missing)} confirmed messages never handled: {missing[:10]}"
    finally:
        stop.set()
        producer_rt.close()
        consumer_rt.close()


if __name__ == "__main__":
    {"holder": holder}[sys.argv[1]](*sys.argv[2:])
