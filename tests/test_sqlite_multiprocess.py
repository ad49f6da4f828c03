"""The SQLite components shared by separate OS processes: groups, kill -9, watches and locks.

Each test starts workers by running this file as a script (``python THIS_FILE ROLE ...``); a
worker reports on stdout, one line per event, and the test reads those lines with deadlines.
"""

from __future__ import annotations

import os
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.role_process import RoleProcess, say

from capa_core import Runtime

pytestmark = pytest.mark.slow

LEASE = 2.0  # seconds; short so a killed consumer's message returns quickly


def runtime_for(db: Path, app_id: str = "mp") -> Runtime:
    url = f"sqlite:///{db}"
    return Runtime.from_mapping(
        {
            "capa": {"app_id": app_id, "default_url": url},
            "pubsub": {"default": {"url": url, "lease": LEASE}},
        }
    )


# --- the worker side (runs in the child processes) -------------------------------------------


def consumer(db: str, topic: str, out: str, stop: str) -> None:
    """Handle messages of ``topic`` in group "workers", appending each n to ``out``."""
    rt = runtime_for(Path(db))
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def handle(message: Any) -> None:
        time.sleep(0.002)  # some work, so the two consumers really share the stream
        os.write(fd, f"{message.data['n']}\n".encode())

    sub = rt.pubsub().subscribe(topic, handle, group="workers", batch=5)
    say("ready")
    deadline = time.monotonic() + 30
    while not os.path.exists(stop) and time.monotonic() < deadline:
        time.sleep(0.02)
    sub.close()
    rt.close()
    say("stopped")


def producer(db: str, topic: str, count: str) -> None:
    rt = runtime_for(Path(db))
    bus = rt.pubsub()
    for n in range(int(count)):
        bus.publish(topic, {"n": n})
    rt.close()
    say("published", count)


def holder(db: str, topic: str) -> None:
    """Take one message and never acknowledge it (the test kills this process)."""
    rt = runtime_for(Path(db))
    messages = rt.pubsub().pull(topic, group="workers", max_messages=1, timeout=10)
    for message in messages:
        say("got", message.data["n"], message.attempt)
    time.sleep(60)


def taker(db: str, topic: str) -> None:
    """Poll for one message, report it with its attempt number, acknowledge it."""
    rt = runtime_for(Path(db))
    bus = rt.pubsub()
    say("polling")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for message in bus.pull(topic, group="workers", max_messages=1, timeout=0.25):
            say("got", message.data["n"], message.attempt)
            message.ack()
            rt.close()
            return
    say("nothing")


def watcher(db: str, app_id: str) -> None:
    """Print every configuration change of ``app_id`` until stdin closes."""
    rt = runtime_for(Path(db), app_id)

    def on_change(changes: Any) -> None:
        for change in changes:
            kind = "deleted" if change.deleted else "changed"
            say(kind, change.item.key, change.item.content)

    sub = rt.configuration().subscribe([], on_change)
    say("ready")
    sys.stdin.read()
    sub.close()
    rt.close()


def locker(db: str, resource: str, counter: str, rounds: str, go: str) -> None:
    """Increment a plain file ``rounds`` times, each time under the lock: no update may be lost."""
    rt = runtime_for(Path(db))
    lock = rt.lock()
    owner = f"pid-{os.getpid()}"
    lock.try_lock(f"{resource}-warm-up", owner, 0.1)  # open the file before the race starts
    say("ready")
    deadline = time.monotonic() + 15
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.001)  # all lockers start together, so they really contend
    for _ in range(int(rounds)):
        deadline = time.monotonic() + 15
        while not lock.try_lock(resource, owner, 5):
            if time.monotonic() > deadline:
                say("timeout")
                return
            time.sleep(0.001)
        value = int(Path(counter).read_text() or 0)
        time.sleep(0.002)  # widen the window in which a second holder would lose an update
        Path(counter).write_text(str(value + 1))
        assert lock.unlock(resource, owner).value == "success"
    rt.close()
    say("done")


ROLES: dict[str, Callable[..., None]] = {
    "consumer": consumer,
    "producer": producer,
    "holder": holder,
    "taker": taker,
    "watcher": watcher,
    "locker": locker,
}


# --- the test side -------------------------------------------------------------------------------


class Worker(RoleProcess):
    """A child process running one of this file's ROLES."""

    def __init__(self, role: str, *args: object) -> None:
        super().__init__(__file__, role, *args)

@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "shared.db"


def test_producer_and_two_consumer_processes_handle_each_message_once(
    db: Path, tmp_path: Path, workers: list[Worker], unique: str
) -> None:
    topic, count, stop = f"orders-{unique}", 200, tmp_path / "stop"
    outs = [tmp_path / "c1.out", tmp_path / "c2.out"]
    for out in outs:
        workers.append(Worker("consumer", db, topic, out, stop))
    for worker in workers:
        worker.expect("ready", 15)
    workers.append(Worker("producer", db, topic, count))
    workers[-1].expect("published", 15)

    def handled() -> list[list[int]]:
        return [
            [int(n) for n in out.read_text().split()] if out.exists() else [] for out in outs
        ]

    deadline = time.monotonic() + 15
    while sum(map(len, handled())) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # a duplicate, if any, would show up now
    stop.touch()
    for worker in workers[:2]:
        worker.expect("stopped", 10)
    first, second = handled()
    assert sorted(first + second) == list(range(count)), "each message exactly once"
    assert first and second, "both consumers of the group took part"


def test_killed_consumer_message_comes_back_after_the_lease(
    db: Path, workers: list[Worker], unique: str
) -> None:
    topic = f"jobs-{unique}"
    with runtime_for(db) as rt:
        rt.pubsub().publish(topic, {"n": 7})  # waits as backlog for the first group
    holding = Worker("holder", db, topic)
    workers.append(holding)
    _, got = holding.expect("got", 15)
    assert got == ["7", "1"]

    taking = Worker("taker", db, topic)
    workers.append(taking)
    taking.expect("polling", 15)
    # While the holder lives its lease is renewed, however long it keeps the message.
    assert taking.silent(1.5 * LEASE), "a live consumer's message went to another consumer"

    killed_at = time.monotonic()
    os.kill(holding.proc.pid, signal.SIGKILL)
    at, got = taking.expect("got", LEASE + 5)
    assert got == ["7", "2"], "redelivered with the next attempt number"
    assert at - killed_at <= LEASE + 1.5


def test_configuration_change_reaches_another_process_within_100ms(
    db: Path, workers: list[Worker], unique: str
) -> None:
    app_id = f"app-{unique}"
    watching = Worker("watcher", db, app_id)
    workers.append(watching)
    watching.expect("ready", 15)
    delays = []
    with runtime_for(db, app_id) as rt:
        cfg = rt.configuration()
        for n in range(6):
            started = time.monotonic()
            cfg.save({"feature.flag": f"v{n}"})
            at, words = watching.expect("changed", 5)
            assert words == ["feature.flag", f"v{n}"]
            delays.append(at - started)
            time.sleep(0.05)
        started = time.monotonic()
        cfg.delete(["feature.flag"])
        at, words = watching.expect("deleted", 5)
        assert words == ["feature.flag", "v5"]
        delays.append(at - started)
    print("cross-process configuration delays (ms):", [round(d * 1000, 1) for d in delays])
    assert statistics.median(delays) < 0.1
    assert max(delays) < 0.1, f"slowest change took {max(delays) * 1000:.0f} ms"


def test_lock_excludes_across_processes(
    db: Path, tmp_path: Path, workers: list[Worker], unique: str
) -> None:
    counter, rounds, go = tmp_path / "counter", 15, tmp_path / "go"
    counter.write_text("0")
    for _ in range(3):
        workers.append(Worker("locker", db, f"res-{unique}", counter, rounds, go))
    for worker in workers:
        worker.expect("ready", 15)
    go.touch()
    for worker in workers:
        worker.expect("done", 15)
    assert int(counter.read_text()) == 3 * rounds, "an update was lost: two holders at once"


if __name__ == "__main__":
    ROLES[sys.argv[1]](*sys.argv[2:])
