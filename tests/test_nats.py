"""The NATS JetStream pub/sub component on the real server: settings, streams, consumers, faults.

The generic behaviour is in tests/conformance (the "nats" target); this file covers what is
particular to JetStream. Every test uses a stream of its own, deleted at the end. Worker processes
run this file as a script (``python THIS_FILE ROLE ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.role_process import RoleProcess, say
from tests.services import require

from capa_core import Runtime
from capa_core.components.nats import NatsPubSub, durable_name, subject_token
from capa_core.errors import ComponentUnavailable, SettingsError
from capa_core.registry import resolve, type_for_url

URL = "nats://127.0.0.1:4222"


def component(stream: str, **metadata: Any) -> NatsPubSub:
    return NatsPubSub("events", {"url": URL, "stream": stream, **metadata})


def jetstream(action: Any) -> Any:
    """Run ``action(js)`` on a connection of the test's own (to look behind the component)."""
    import nats

    async def main() -> Any:
        client = await nats.connect(URL)
        try:
            return await action(client.jetstream())
        finally:
            await client.close()

    return asyncio.run(main())


def value(setting: Any) -> Any:
    """An enum member's value, or the plain value nats-py sometimes leaves in its place."""
    return getattr(setting, "value", setting)


def delete_stream(name: str) -> None:
    async def delete(js: Any) -> None:
        with contextlib.suppress(Exception):  # never made, or already gone
            await js.delete_stream(name)

    jetstream(delete)


@pytest.fixture
def stream(unique: str) -> Iterator[str]:
    name = f"capa-test-nats-{unique}"
    yield name
    delete_stream(name)


@pytest.fixture
def bus(stream: str) -> Iterator[NatsPubSub]:
    require("nats")
    made = component(stream)
    yield made
    made.close()


# --- settings (no server needed) -----------------------------------------------------------------


def test_settings_from_urls_and_dapr_metadata() -> None:
    made = NatsPubSub("orders", {"natsURL": "nats://a:4222, nats://b:4223",
                                 "streamName": "shop", "memoryStorage": "true",
                                 "ackWait": "30s", "maxAckPending": "100"})
    assert made.servers == ["nats://a:4222", "nats://b:4223"]
    assert (made.stream, made.prefix, made.storage) == ("shop", "shop", "memory")
    assert (made.ack_wait, made.max_ack_pending) == (30.0, 100)
    assert made._link is None  # no thread, no connection until first use
    defaults = NatsPubSub("my.bus", {"url": URL})
    assert (defaults.stream, defaults.prefix, defaults.storage) == ("capa-my_bus", "capa-my_bus",
                                                                     "file")
    assert defaults.subject("orders.created") == "capa-my_bus.orders.created"
    with_secret = NatsPubSub("b", {"url": "nats://user:secret@h:4222"})
    assert "secret" not in with_secret.address


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ({}, "url"),
        ({"url": "redis://127.0.0.1:6379"}, "url"),
        ({"url": "nats://h:port"}, "url"),
        ({"url": URL, "stream": "has.dot"}, "stream"),
        ({"url": URL, "stream": "has space"}, "stream"),
        ({"url": URL, "subjectPrefix": "a.*"}, "subjectPrefix"),
        ({"url": URL, "subjectPrefix": "a..b"}, "subjectPrefix"),
        ({"url": URL, "storage": "disk"}, "storage"),
        ({"url": URL, "maxAge": "forever"}, "maxAge"),
        ({"url": URL, "ackWait": 0}, "ackWait"),
        ({"url": URL, "replicas": "two"}, "replicas"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_setting(
    metadata: dict[str, Any], key: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        NatsPubSub("events", metadata)
    assert caught.value.key == key


def test_topics_map_to_distinct_valid_subjects() -> None:
    topics = ["orders", "orders.created", "a b", "a.*", "a.>", "a..b", ".a", "a.", ".", "%2E",
              "a%2Eb", "grüße"]
    tokens = [subject_token(t) for t in topics]
    assert len(set(tokens)) == len(topics)
    valid = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
    assert all(valid.match(t) for t in tokens), tokens
    assert subject_token("orders.created") == "orders.created"  # levels stay levels
    names = {durable_name(t, g) for t in topics for g in ("g", "g.1", "x y")}
    assert len(names) == len(topics) * 3
    assert all(re.match(r"^[A-Za-z0-9_-]+$", n) for n in names)


def test_nats_urls_and_dapr_files_pick_this_component(tmp_path: Path) -> None:
    assert resolve(type_for_url("pubsub", "nats://h:4222")) is NatsPubSub
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "bus.yaml").write_text(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: bus\nspec:\n"
        "  type: pubsub.jetstream\n  version: v1\n  metadata:\n"
        "  - name: natsURL\n    value: nats://nats:4222\n"
        "  - name: streamName\n    value: orders\n"
    )
    rt = Runtime.from_mapping({"capa": {"components_dir": "components"}}, cwd=tmp_path)
    try:
        bus = rt.pubsub("bus").component
        assert isinstance(bus, NatsPubSub)
        assert (bus.servers, bus.stream) == (["nats://nats:4222"], "orders")
    finally:
        rt.close()


# --- the server ----------------------------------------------------------------------------------


def test_publish_returns_once_the_stream_holds_the_message(
    bus: NatsPubSub, stream: str
) -> None:
    for n in range(20):
        bus.publish("orders", f"m{n}".encode(), {"n": str(n)})
    assert bus.bulk_publish("orders", [(str(n), b"bulk", {}) for n in range(30)]) == {}

    async def count(js: Any) -> int:
        return int((await js.stream_info(stream)).state.messages)

    assert jetstream(count) == 50


def test_the_stream_and_consumers_are_made_as_documented(bus: NatsPubSub, stream: str) -> None:
    bus.publish("orders", b"early", {})
    bus.ensure_group("orders", "first")
    bus.publish("orders", b"late", {})
    bus.ensure_group("orders", "second")
    bus.pull("orders", "first", 1, 1.0, 7.5)

    async def look(js: Any) -> tuple[Any, Any, Any]:
        info = await js.stream_info(stream)
        first = await js.consumer_info(stream, durable_name("orders", "first"))
        second = await js.consumer_info(stream, durable_name("orders", "second"))
        return info.config, first.config, second.config

    config, first, second = jetstream(look)
    assert config.subjects == [f"{stream}.>"]
    assert value(config.retention) == "limits"
    assert value(first.deliver_policy) == "all"
    assert value(second.deliver_policy) == "new"
    assert first.filter_subject == f"{stream}.orders"
    assert value(first.ack_policy) == "explicit"
    assert first.max_deliver == -1  # only the client layer dead-letters
    assert first.ack_wait == 7.5  # the pull's lease became the consumer's ack_wait
    assert second.ack_wait == 20.0


def test_attempts_leases_and_nack_delay_come_from_jetstream(bus: NatsPubSub) -> None:
    bus.ensure_group("t", "g")
    bus.publish("t", b"x", {"k": "v"})
    [first] = bus.pull("t", "g", 10, 2.0, 1.0)
    assert (first.attempt, dict(first.metadata)) == (1, {"k": "v"})
    assert bus.pull("t", "g", 10, 0.2, 1.0) == []
    [again] = bus.pull("t", "g", 10, 3.0, 1.0)  # its 1 s lease ran out
    assert again.attempt == 2
    for _ in range(3):  # in progress: the lease starts again each time
        bus.extend("t", "g", [again.id], 1.0)
        time.sleep(0.5)
    assert bus.pull("t", "g", 10, 0.1, 1.0) == []
    nacked = time.monotonic()
    bus.nack("t", "g", [again.id], 0.6)
    [third] = bus.pull("t", "g", 10, 3.0, 1.0)
    assert time.monotonic() - nacked >= 0.5
    assert third.attempt == 3
    bus.ack("t", "g", [third.id])
    assert bus.pull("t", "g", 10, 1.5, 1.0) == []


def test_a_pull_returns_what_is_ready_without_waiting_for_a_full_batch(bus: NatsPubSub) -> None:
    bus.ensure_group("t", "g")
    for n in range(3):
        bus.publish("t", str(n).encode(), {})
    started = time.monotonic()
    got = bus.pull("t", "g", 100, 5.0, 20)
    assert [d.data for d in got] == [b"0", b"1", b"2"]
    assert time.monotonic() - started < 1.0
    bus.ack("t", "g", [d.id for d in got])
    for _ in range(4):
        bus.publish("t", b"p", {})
    assert bus.purge("t", "g") == 4
    assert bus.pull("t", "g", 10, 0.2, 20) == []


def test_subjects_taken_by_another_stream_are_a_settings_error(unique: str) -> None:
    require("nats")
    taken, mine = f"capa-test-nats-{unique}-a", f"capa-test-nats-{unique}-b"
    owner = component(taken)
    try:
        owner.publish("t", b"x", {})
        clash = NatsPubSub("clash", {"url": URL, "stream": mine, "subjectPrefix": taken})
        rt_error: Exception | None = None
        try:
            clash.publish("t", b"x", {})
        except Exception as exc:
            rt_error = exc
        clash.close()
        assert rt_error is not None
        error = clash.translate_error(rt_error)
        assert isinstance(error, SettingsError)
        assert error.key == "stream"
        assert "overlap" in str(error)
    finally:
        owner.close()
        delete_stream(taken)
        delete_stream(mine)


def test_an_unreachable_server_is_component_unavailable_within_bounds() -> None:
    rt = Runtime.from_mapping({
        "capa": {"default_url": "memory://", "retries": 2},
        "pubsub": {"bus": {"url": "nats://127.0.0.1:1", "connectTimeout": 1}},
    })
    try:
        started = time.monotonic()
        with pytest.raises(ComponentUnavailable, match="connection"):
            rt.pubsub("bus").publish("t", 1)
        with pytest.raises(ComponentUnavailable, match="connection"):
            rt.pubsub("bus").ping()
        assert time.monotonic() - started < 20
    finally:
        rt.close()


def test_close_flushes_acks_sent_without_waiting(stream: str) -> None:
    require("nats")
    made = component(stream)
    made.ensure_group("t", "g")
    made.publish("t", b"x", {})
    [delivery] = made.pull("t", "g", 1, 2.0, 1.0)
    made.ack("t", "g", [delivery.id])
    made.close()  # right after the ack: it must still reach the server
    other = component(stream)
    try:
        assert other.pull("t", "g", 1, 2.0, 1.0) == []  # past the 1 s lease: nothing back
    finally:
        other.close()


# --- other processes -----------------------------------------------------------------------------


def holder(stream: str, count: str, lease: str) -> None:
    """Pull ``count`` messages, never acknowledge them, and wait to be killed."""
    made = component(stream)
    got: list[Any] = []
    deadline = time.monotonic() + 20
    while len(got) < int(count) and time.monotonic() < deadline:
        got += made.pull("work", "g", int(count) - len(got), 1.0, float(lease))
    say("holding", " ".join(d.data.decode() for d in got))
    time.sleep(120)


@pytest.mark.slow
def test_a_killed_consumer_process_messages_go_to_another_consumer(
    bus: NatsPubSub, stream: str
) -> None:
    """kill -9 a process holding unacked messages: another consumer gets them after the lease."""
    lease = 2.0
    bus.ensure_group("work", "g")
    for n in range(3):
        bus.publish("work", f"job-{n}".encode(), {})
    process = RoleProcess(__file__, "holder", stream, "3", str(lease))
    try:
        assert process.expect("holding", 30)[1] == ["job-0", "job-1", "job-2"]
        killed_at = time.monotonic()
        os.kill(process.proc.pid, signal.SIGKILL)
        got: list[Any] = []
        while len(got) < 3 and time.monotonic() - killed_at < lease + 5:
            got += bus.pull("work", "g", 3 - len(got), 1.0, lease)
        assert time.monotonic() - killed_at < lease + 3
        assert sorted(d.data for d in got) == [b"job-0", b"job-1", b"job-2"]
        assert {d.attempt for d in got} == {2}
        bus.ack("work", "g", [d.id for d in got])
    finally:
        process.stop()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateServer:
    """A nats-server of the test's own (loopback, JetStream on a temporary directory)."""

    def __init__(self, store: Path) -> None:
        self.port = free_port()
        self.store = store
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
             str(self.store)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket_to(self.port):
                return
            time.sleep(0.05)
        raise AssertionError("the private nats-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@contextlib.contextmanager
def socket_to(port: int) -> Iterator[None]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        yield


@pytest.mark.slow
def test_server_restart_loses_no_acknowledged_message(tmp_path: Path, unique: str) -> None:
    """Restart a private nats-server under a producer and a consumer: every message whose
    publish returned (JetStream acknowledged it) is handled at least once afterwards."""
    require("nats")  # the binary and JetStream are there
    server = PrivateServer(tmp_path / "jetstream")
    server.start()
    settings = {
        "capa": {"app_id": f"app-{unique}", "default_url": "memory://", "retries": 2},
        "pubsub": {"bus": {"url": server.url, "stream": f"capa-restart-{unique}",
                           "requestTimeout": 1, "connectTimeout": 2, "lease": 5}},
    }
    producer_rt, consumer_rt = Runtime.from_mapping(settings), Runtime.from_mapping(settings)
    seen: set[int] = set()
    confirmed: list[tuple[int, float]] = []
    stop = threading.Event()
    try:
        producer, consumer = producer_rt.pubsub("bus"), consumer_rt.pubsub("bus")
        consumer.subscribe("orders", lambda m: seen.add(int(m.data)), group="g", batch=10)

        def produce() -> None:
            n = 0
            while not stop.is_set():
                try:
                    producer.publish("orders", n)
                except ComponentUnavailable:
                    time.sleep(0.1)  # not acknowledged: it need not arrive
                else:
                    confirmed.append((n, time.monotonic()))
                n += 1
                time.sleep(0.005)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        time.sleep(1.0)
        server.stop()
        time.sleep(1.0)
        server.start()
        restarted_at = time.monotonic()
        time.sleep(3.0)
        stop.set()
        thread.join(15)
        sent = {n for n, _ in confirmed}
        assert any(at > restarted_at for _, at in confirmed), "no publish after the restart"
        deadline = time.monotonic() + 20
        while not sent <= seen and time.monotonic() < deadline:
            time.sleep(0.1)
        missing = sorted(sent - seen)
        assert not missing, f"{len(missing)} acknowledged messages never handled: {missing[:10]}"
    finally:
        stop.set()
        producer_rt.close()
        consumer_rt.close()
        server.stop()


if __name__ == "__main__":
    {"holder": holder}[sys.argv[1]](*sys.argv[2:])
