"""What is particular to the SQLite components: file paths, durability, sharing and failures.

The behaviour every component shares is in tests/conformance; processes are in
tests/test_sqlite_multiprocess.py.
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from capa_core import (
    ComponentUnavailable,
    ConfigurationItem,
    ETagMismatch,
    Runtime,
    SettingsError,
    UnlockStatus,
)
from capa_core.components.sqlite import SqliteConfiguration, SqlitePubSub, SqliteState


def runtime(url: str, app_id: str = "app", **options: Any) -> Runtime:
    """A Runtime whose four blocks are sqlite components on ``url``."""
    table = {"url": url, **options}
    return Runtime.from_mapping(
        {
            "capa": {"app_id": app_id, "default_url": "memory://"},
            **{block: {"default": dict(table)} for block in
               ("state", "pubsub", "configuration", "lock")},
        }
    )


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}


def wait_for(condition: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)
    return result


# --- URLs and file paths ------------------------------------------------------------------------


def test_relative_url_is_relative_to_the_working_directory(in_tmp: Path) -> None:
    (in_tmp / "data").mkdir()
    with runtime("sqlite:///data/app.db") as rt:
        rt.state().save("k", 1)
    assert (in_tmp / "data" / "app.db").is_file()


def test_absolute_url_has_four_slashes(tmp_path: Path) -> None:
    db = tmp_path / "abs.db"
    assert str(db).startswith("/")
    with runtime(f"sqlite:///{db}") as rt:  # sqlite:/// + /tmp/... = sqlite:////tmp/...
        rt.state().save("k", 1)
    assert db.is_file()


def test_path_setting_and_url_query_options(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    rt = Runtime.from_mapping(
        {"state": {"default": {"type": "state.sqlite", "path": str(db)}}}
    )
    with rt:
        rt.state().save("k", 1)
    with runtime(f"sqlite:///{db}?table_prefix=other_&busy_timeout=2") as rt:
        rt.state().save("k", 2)
        assert rt.component("state", "default", SqliteState).busy_timeout == 2.0
    assert {"capa_state", "other_state"} <= tables(db)


def test_no_url_nor_path_means_capa_db_in_the_working_directory(in_tmp: Path) -> None:
    with Runtime.from_mapping({"state": {"default": {"type": "state.sqlite"}}}) as rt:
        rt.state().save("k", 1)
    assert (in_tmp / "capa.db").is_file()


def test_nothing_touches_the_disk_before_first_use(tmp_path: Path) -> None:
    db = tmp_path / "lazy.db"
    with runtime(f"sqlite:///{db}") as rt:
        for block in ("state", "pubsub", "configuration", "lock"):
            getattr(rt, block)()
        assert not db.exists()


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("sqlite://data/app.db", "three slashes"),
        ("sqlite:///", "no file path"),
        ("sqlite:", "no file path"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///{tmp}/missing/app.db", "does not exist"),
        ("sqlite:///{tmp}", "is a directory"),
        ("sqlite:///{tmp}/x.db?cache=shared", "unknown query parameter 'cache'"),
        ("sqlite:///{tmp}/x.db?busy_timeout=soon", "busy_timeout"),
        ("sqlite:///{tmp}/x.db?table_prefix=drop table", "table_prefix"),
        ("sqlite:///{tmp}/x.db?poll_interval=0", "poll_interval"),
    ],
)
def test_bad_settings_fail_at_start_up_naming_the_setting(
    tmp_path: Path, url: str, words: str
) -> None:
    with pytest.raises(SettingsError) as info:
        runtime(url.format(tmp=tmp_path))
    message = str(info.value)
    assert words in message
    assert "[configuration.default]" in message or "[state.default]" in message


def test_url_and_path_together_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="path: is given together with url"):
        Runtime.from_mapping(
            {"state": {"s": {"url": f"sqlite:///{tmp_path}/a.db", "path": "b.db"}}}
        )


def test_a_file_that_is_not_a_database_is_a_settings_error_on_use(tmp_path: Path) -> None:
    db = tmp_path / "notes.db"
    db.write_bytes(b"these are not the pages of a SQLite database\n" * 100)
    with runtime(f"sqlite:///{db}") as rt, pytest.raises(SettingsError, match=r"notes\.db"):
        rt.state().get("k")


def test_a_locked_database_is_retried_then_reported_unavailable(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    with runtime(f"sqlite:///{db}", busy_timeout=0.05) as rt:
        store = rt.state()
        store.save("k", 1)
        blocker = sqlite3.connect(db, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(ComponentUnavailable, match="locked"):
                store.save("k", 2)
            assert store.get("k").value == 1  # type: ignore[union-attr]  # readers go on in WAL
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        store.save("k", 3)
        assert store.get_value("k") == 3


# --- one file, durable ----------------------------------------------------------------------------


def test_all_four_blocks_share_one_file_in_their_own_tables(tmp_path: Path) -> None:
    db = tmp_path / "all.db"
    with runtime(f"sqlite:///{db}") as rt:
        rt.state().save("k", 1)
        rt.pubsub().publish("t", 1)
        rt.configuration().save({"a": "1"})
        rt.lock().try_lock("r", "me", 5)
    assert {
        "capa_state", "capa_messages", "capa_groups", "capa_deliveries", "capa_configuration",
        "capa_configuration_log", "capa_locks",
    } <= tables(db)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_everything_survives_a_new_runtime(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'durable.db'}"
    with runtime(url) as rt:
        etag = rt.state().save("k", {"v": 1})
        rt.state().save("short", 1, ttl=60)
        bus = rt.pubsub()
        bus.pull("orders", group="billing", timeout=0)  # declare the group
        bus.publish("orders", {"n": 1})
        bus.publish("orders", {"n": 2})
        rt.configuration().save([ConfigurationItem("db.pool", "10", "g", "prod", {"t": "x"})])
        assert rt.lock().try_lock("res", "owner-1", 60)
    with runtime(url) as rt:
        item = rt.state().get("k")
        assert item is not None and item.value == {"v": 1} and item.etag == etag
        short = rt.state().get("short")
        assert short is not None and short.expires_at is not None
        assert short.expires_at - time.time() > 50
        with pytest.raises(ETagMismatch):
            rt.state().save("k", 2, etag="stale")
        got = rt.pubsub().pull("orders", group="billing", max_messages=10, timeout=1)
        assert [m.data for m in got] == [{"n": 1}, {"n": 2}]
        for message in got:
            message.ack()
        assert rt.configuration().get(["db.pool"], group="g", label="prod") == [
            ConfigurationItem("db.pool", "10", "g", "prod", {"t": "x"})
        ]
        assert not rt.lock().try_lock("res", "owner-2", 5)
        assert rt.lock().unlock("res", "owner-1") is UnlockStatus.SUCCESS


def test_unacked_message_of_a_closed_runtime_returns_after_its_lease(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'lease.db'}"
    with runtime(url, lease=0.5) as rt:
        rt.pubsub().publish("jobs", "work")
        (message,) = rt.pubsub().pull("jobs", group="w", timeout=1)
        assert message.attempt == 1  # closed without ack: as if the process died
    with runtime(url, lease=0.5) as rt:
        started = time.monotonic()
        (message,) = rt.pubsub().pull("jobs", group="w", timeout=3)
        assert message.data == "work" and message.attempt == 2
        assert time.monotonic() - started < 1.5
        message.ack()


# --- pub/sub tables -------------------------------------------------------------------------------


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_message_is_deleted_once_every_group_has_acked_it(tmp_path: Path) -> None:
    db = tmp_path / "trim.db"
    with runtime(f"sqlite:///{db}") as rt:
        bus = rt.pubsub()
        for group in ("a", "b"):
            bus.pull("t", group=group, timeout=0)
        bus.publish("t", 1)
        (first,) = bus.pull("t", group="a", timeout=1)
        first.ack()
        assert count(db, "capa_messages") == 1  # group b still has it
        (second,) = bus.pull("t", group="b", timeout=1)
        second.nack(delay=0)
        assert count(db, "capa_messages") == 1
        (again,) = bus.pull("t", group="b", timeout=1)
        assert again.attempt == 2
        again.ack()
        assert count(db, "capa_messages") == 0
        assert count(db, "capa_deliveries") == 0


def test_backlog_goes_to_the_first_group_only(tmp_path: Path) -> None:
    with runtime(f"sqlite:///{tmp_path / 'backlog.db'}") as rt:
        bus = rt.pubsub()
        bus.publish("t", "early")
        (message,) = bus.pull("t", group="first", timeout=1)
        assert message.data == "early"
        message.ack()
        assert bus.pull("t", group="second", timeout=0) == []
        bus.publish("t", "late")
        assert [m.data for m in bus.pull("t", group="second", timeout=1)] == ["late"]


def test_purge_drops_waiting_messages_of_one_group(tmp_path: Path) -> None:
    db = tmp_path / "purge.db"
    with runtime(f"sqlite:///{db}") as rt:
        bus = rt.pubsub()
        for group in ("a", "b"):
            bus.pull("t", group=group, timeout=0)
        for n in range(3):
            bus.publish("t", n)
        assert bus.purge("t", group="a") == 3
        assert bus.purge("t", group="nobody") == 0
        assert count(db, "capa_messages") == 3  # group b has not seen them
        assert bus.purge("t", group="b") == 3
        assert count(db, "capa_messages") == 0


def test_a_renewal_arriving_after_a_nack_does_not_hide_the_message(tmp_path: Path) -> None:
    # The client's lease keeper may renew a delivery its consumer has just nacked.
    with runtime(f"sqlite:///{tmp_path / 'race.db'}") as rt:
        component = rt.component("pubsub", "default", SqlitePubSub)
        component.publish("t", b"x", {})
        (delivery,) = component.pull("t", "g", 1, 1.0, 30.0)
        component.nack("t", "g", [delivery.id], 0.0)
        component.extend("t", "g", [delivery.id], 30.0)
        (again,) = component.pull("t", "g", 1, 1.0, 30.0)
        assert (again.id, again.attempt) == (delivery.id, 2)
        component.extend("t", "g", [again.id], 30.0)  # a live lease is renewed
        assert component.pull("t", "g", 1, 0.0, 30.0) == []
        component.ack("t", "g", [again.id])


def test_a_local_publish_wakes_a_waiting_pull_at_once(tmp_path: Path) -> None:
    with runtime(f"sqlite:///{tmp_path / 'wake.db'}") as rt:
        bus = rt.pubsub()
        bus.pull("t", group="g", timeout=0)
        threading.Timer(0.3, bus.publish, ("t", "hello")).start()
        started = time.monotonic()
        (message,) = bus.pull("t", group="g", timeout=5)
        assert 0.25 < time.monotonic() - started < 0.45
        message.ack()
        started = time.monotonic()
        assert bus.pull("t", group="g", timeout=0.3) == []
        assert 0.29 < time.monotonic() - started < 0.5


def test_an_idle_pull_polls_a_few_times_not_continuously(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with runtime(f"sqlite:///{tmp_path / 'idle.db'}") as rt:
        component = rt.component("pubsub", "default", SqlitePubSub)
        rt.pubsub().pull("t", group="g", timeout=0)
        polls = 0
        take = component._take

        def counting_take(*args: Any) -> Any:
            nonlocal polls
            polls += 1
            return take(*args)

        monkeypatch.setattr(component, "_take", counting_take)
        component.pull("t", "g", 10, 1.0, 30.0)
        assert 5 <= polls <= 40  # backoff from 2 ms to 50 ms: about 25 polls in a second


def test_state_from_many_threads_with_etag_retries_loses_nothing(tmp_path: Path) -> None:
    with runtime(f"sqlite:///{tmp_path / 'threads.db'}") as rt:
        store = rt.state()
        store.save("counter", 0)

        def bump(times: int) -> None:
            for _ in range(times):
                while True:
                    item = store.get("counter")
                    assert item is not None
                    try:
                        store.save("counter", item.value + 1, etag=item.etag)
                        break
                    except ETagMismatch:
                        continue

        threads = [threading.Thread(target=bump, args=(50,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert store.get_value("counter") == 200


def test_expired_rows_are_invisible_and_swept_by_writers(tmp_path: Path) -> None:
    db = tmp_path / "ttl.db"
    with runtime(f"sqlite:///{db}") as rt:
        store = rt.state()
        store.save("gone", 1, ttl=0.1)
        store.save("kept", 1)
        time.sleep(0.15)
        assert store.get("gone") is None
        assert store.keys() == ["kept"]
        assert store.bulk_get(["gone", "kept"])[0] is None
        assert count(db, "capa_state") == 2  # reads never write
        store.save("gone", 2, concurrency="first-write")  # an expired key counts as absent
        store.save("brief", 1, ttl=0.1)
    time.sleep(0.15)
    with runtime(f"sqlite:///{db}") as rt:
        rt.state().save("other", 1)  # the first write of a component sweeps
    assert count(db, "capa_state") == 3


# --- configuration watching -----------------------------------------------------------------------


def test_watch_sees_changes_of_another_runtime_on_the_same_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cfg.db'}"
    seen: list[Any] = []
    with runtime(url, app_id="one") as watching, runtime(url, app_id="one") as writing:
        watching.configuration().subscribe([], seen.extend)
        writing.configuration().save({"a": "1", "b": "2"})
        writing.configuration().delete(["a"])
        with runtime(url, app_id="other") as other:
            other.configuration().save({"a": "x"})  # another app: not reported
        wait_for(lambda: len(seen) >= 3)
        time.sleep(0.1)
    assert [(c.item.key, c.item.content, c.deleted) for c in seen] == [
        ("a", "1", False), ("b", "2", False), ("a", "1", True),
    ]


def test_close_stops_the_watcher_thread(tmp_path: Path) -> None:
    rt = runtime(f"sqlite:///{tmp_path / 'stop.db'}")
    rt.configuration().subscribe([], lambda changes: None)
    component = rt.component("configuration", "default", SqliteConfiguration)
    watcher = component._watcher
    assert watcher is not None and watcher.is_alive()
    rt.close()
    assert not watcher.is_alive()


def _child_uses_inherited_runtime(rt: Runtime, results: Any, changes: Any) -> None:
    rt.state().save("from-child", 2)
    rt.pubsub().publish("t", "from child")
    results.put(rt.state().get_value("from-parent"))
    # The parent's configuration subscription still reports in the child.
    (pid, content) = changes.get(timeout=10)
    results.put(pid == os.getpid() and content)


# Python 3.12+ warns that forking a threaded process is risky; forking servers do it anyway.
@pytest.mark.filterwarnings("ignore:.*use of fork\\(\\) may lead to deadlocks:DeprecationWarning")
def test_a_forked_child_opens_its_own_connections(tmp_path: Path) -> None:
    # Servers like gunicorn (preload) and Celery (prefork) fork after the app has set up capa.
    with runtime(f"sqlite:///{tmp_path / 'fork.db'}") as rt:
        rt.state().save("from-parent", 1)
        context = multiprocessing.get_context("fork")
        results, changes = context.Queue(), context.Queue()

        def forward(batch: list[Any]) -> None:
            if os.getpid() != parent:  # the parent itself sees the change too
                changes.put((os.getpid(), batch[0].item.content))

        parent = os.getpid()
        rt.configuration().subscribe(["flag"], forward)
        child = context.Process(
            target=_child_uses_inherited_runtime, args=(rt, results, changes)
        )
        child.start()
        assert results.get(timeout=10) == 1
        rt.configuration().save({"flag": "on"})
        assert results.get(timeout=10) == "on"
        child.join(10)
        assert child.exitcode == 0
        assert rt.state().get_value("from-child") == 2
        assert rt.pubsub().pull("t", group="g", timeout=1)[0].data == "from child"
