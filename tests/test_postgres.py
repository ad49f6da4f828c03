"""The PostgreSQL components beyond the conformance suite: settings, wake-ups, faults, isolation.

Every test works on tables of its own (prefix ``tp_<unique>_``, dropped afterwards). The
multi-process tests start workers by running this file as a script (``python THIS_FILE ROLE
...``); a worker reports on stdout, one line per event. The fault tests cut only their own
connections (pg_terminate_backend on their application_name); the shared server keeps running.
"""

from __future__ import annotations

import os
import queue
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.role_process import RoleProcess, say

from capa_core import Runtime
from capa_core.errors import CapaError, ComponentUnavailable, SettingsError
from capa_core.types import ConfigurationChange, ConfigurationItem

LEASE = 1.5  # seconds; short so a killed consumer's messages return quickly
BLOCKS = ("state", "pubsub", "configuration", "lock")


def server_url() -> str:
    from tests.services import require

    return require("postgres")


def runtime_for(
    url: str, prefix: str, app_id: str = "app", *, retries: int = 3, **extra: Any
) -> Runtime:
    """A Runtime whose four components all live in the ``prefix`` tables of ``url``."""
    table = {"url": url, "table_prefix": prefix, **extra}
    return Runtime.from_mapping(
        {"capa": {"app_id": app_id, "retries": retries}, **{b: {"default": table} for b in BLOCKS}}
    )


def sql(url: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def tables(url: str, prefix: str) -> list[str]:
    pattern = prefix.replace("_", "\\_") + "%"
    return sorted(
        row[0] for row in sql(
            url, "SELECT schemaname || '.' || tablename FROM pg_tables WHERE tablename LIKE %s",
            (pattern,),
        )
    )


@pytest.fixture
def prefix(unique: str) -> Iterator[str]:
    """A table prefix of this test's own; its tables are dropped afterwards."""
    url = server_url()
    name = f"tp_{unique}_"
    yield name
    for table in tables(url, name):
        schema, _, bare = table.partition(".")
        sql(url, f'DROP TABLE IF EXISTS "{schema}"."{bare}"')
    sql(url, f'DROP SCHEMA IF EXISTS "{name}schema" CASCADE')


@pytest.fixture
def url() -> str:
    return server_url()


def terminate(url: str, application_name: str) -> int:
    """Cut every server connection opened under ``application_name``; how many there were."""
    rows = sql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    )
    return int(rows[0][0])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.02)


# --- settings (no server needed) -------------------------------------------------------------


def make(cls_name: str, **metadata: Any) -> Any:
    from capa_core.components import postgres

    cls = getattr(postgres, cls_name)
    return cls("pg", metadata, source="capa.toml [state.pg]")


def conninfo_of(component: Any) -> dict[str, str]:
    import psycopg

    return dict(psycopg.conninfo.conninfo_to_dict(component._db.conninfo))  # type: ignore[arg-type]


def test_url_with_part_overrides_such_as_a_secret_password() -> None:
    state = make(
        "PostgresState", url="postgresql://app@db.example:6543/orders", password="s3cret",
        port="5433",
    )
    info = conninfo_of(state)
    assert (info["host"], info["user"], info["dbname"]) == ("db.example", "app", "orders")
    assert info["password"] == "s3cret"
    assert info["port"] == "5433"
    assert info["connect_timeout"] == "5"  # never hang on an unreachable host


def test_dapr_connection_string_table_name_schema_and_timeout() -> None:
    state = make(
        "PostgresState",
        connectionString="host=127.0.0.1 port=5432 user=postgres dbname=test",
        tableName="orders_state", schema="shop", timeoutInSeconds="2.5", maxConns="3",
    )
    info = conninfo_of(state)
    assert (info["host"], info["dbname"], info["user"]) == ("127.0.0.1", "test", "postgres")
    assert info["options"] == "-c statement_timeout=2500"
    assert state._db.tables["main"] == '"shop"."orders_state"'
    assert state._db.max_size == 3
    pubsub = make("PostgresPubSub", url="postgresql://127.0.0.1/test", tableName="events")
    assert pubsub._db.tables == {"main": '"events"', "groups": '"events_groups"'}
    lock = make("PostgresLock", url="postgresql://127.0.0.1/test", tablePrefix="svc_")
    assert lock._db.tables == {"main": '"svc_locks"'}


@pytest.mark.parametrize(
    ("metadata", "key"),
    [
        ({}, "url"),
        ({"url": "mysql://root@127.0.0.1/test"}, "url"),
        ({"url": "this is not a connection string"}, "url"),
        ({"connectionString": "host=127.0.0.1 bogus=1"}, "connectionString"),
        ({"url": "postgresql://127.0.0.1/test", "table_prefix": "bad-prefix;"}, "table_prefix"),
        ({"url": "postgresql://127.0.0.1/test", "table_prefix": "x" * 60}, "table_prefix"),
        ({"url": "postgresql://127.0.0.1/test", "tableName": "drop table"}, "table"),
        ({"url": "postgresql://127.0.0.1/test", "schema": "a.b"}, "schema"),
        ({"url": "postgresql://127.0.0.1/test", "pool_max_size": "0"}, "pool_max_size"),
        ({"url": "postgresql://127.0.0.1/test", "maxConns": "many"}, "pool_max_size"),
        ({"url": "postgresql://127.0.0.1/test", "pool_timeout": "0"}, "pool_timeout"),
        ({"url": "postgresql://127.0.0.1/test", "timeoutInSeconds": "-1"}, "timeout"),
    ],
)
def test_bad_settings_fail_at_start_up_naming_the_setting(
    metadata: dict[str, Any], key: str
) -> None:
    with pytest.raises(SettingsError) as info:
        make("PostgresState", **metadata)
    assert info.value.key == key
    assert "capa.toml [state.pg]" in str(info.value)


def test_settings_errors_surface_through_the_runtime() -> None:
    with pytest.raises(SettingsError, match="url"):
        Runtime.from_mapping({"state": {"s": {"type": "state.postgres"}}})


def test_nothing_connects_before_first_use_and_an_unreachable_server_is_reported() -> None:
    # Port 1 on loopback refuses at once: constructing must not notice, using must.
    rt = runtime_for("postgresql://postgres@127.0.0.1:1/test", "tp_never_", retries=1,
                     pool_timeout=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ComponentUnavailable, match="unreachable"):
            rt.state().get("k")
        with pytest.raises(ComponentUnavailable, match="unreachable"):
            rt.state().ping()
        assert time.monotonic() - started < 10
    finally:
        rt.close()


# --- tables, isolation, state details --------------------------------------------------------


def test_tables_appear_on_first_use_named_by_prefix(url: str, prefix: str) -> None:
    rt = runtime_for(url, prefix)
    try:
        assert tables(url, prefix) == []
        rt.state().save("k", 1)
        assert tables(url, prefix) == [f"public.{prefix}state"]
        rt.lock().try_lock("r", "me", 5)
        rt.pubsub().publish("t", 1)
        rt.configuration().save({"k": "v"})
        assert tables(url, prefix) == sorted(
            f"public.{prefix}{name}"
            for name in (
                "configuration", "locks", "pubsub_groups", "pubsub_messages", "state"
            )
        )
    finally:
        rt.close()


def test_table_name_and_schema_settings(url: str, prefix: str) -> None:
    schema = f"{prefix}schema"
    rt = Runtime.from_mapping(
        {"state": {"default": {"url": url, "tableName": f"{prefix}kv", "schema": schema}}}
    )
    try:
        rt.state().save("k", {"v": 1})
        assert tables(url, prefix) == [f"{schema}.{prefix}kv"]
        assert rt.state().get_value("k") == {"v": 1}
    finally:
        rt.close()


def test_a_table_of_another_layout_is_reported_not_used(url: str, prefix: str) -> None:
    sql(url, f'CREATE TABLE "{prefix}state" (key text PRIMARY KEY, value jsonb)')
    rt = runtime_for(url, prefix)
    try:
        with pytest.raises(SettingsError, match="without the columns etag, expires_at"):
            rt.state().get("k")
    finally:
        rt.close()


def test_secret_password_reaches_the_connection(
    url: str, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TP_PG_PASSWORD", "from-a-secret")
    rt = Runtime.from_mapping(
        {"state": {"default": {
            "url": url, "table_prefix": prefix, "password": {"secret": "TP_PG_PASSWORD"},
        }}}
    )
    try:
        component = rt.state().component
        assert conninfo_of(component)["password"] == "from-a-secret"
        rt.state().save("k", 1)  # the server trusts loopback: the password is simply carried
        assert rt.state().get_value("k") == 1
    finally:
        rt.close()


def test_two_app_ids_on_one_database_do_not_see_each_other(url: str, prefix: str) -> None:
    one, two = runtime_for(url, prefix, "billing"), runtime_for(url, prefix, "shipping")
    try:
        one.state().save("k", "billing's")
        two.state().save("k", "shipping's")
        assert one.state().get_value("k") == "billing's"
        assert two.state().get_value("k") == "shipping's"
        assert one.state().keys() == ["k"]
        assert two.state().delete_prefix("") == 1
        assert one.state().get_value("k") == "billing's"
        # Locks and configuration are per app as well.
        assert one.lock().try_lock("job", "a", 5)
        assert two.lock().try_lock("job", "b", 5)
        one.configuration().save({"db.pool": "5"})
        assert two.configuration().get([]) == []
        assert one.configuration().get_map() == {"db.pool": "5"}
    finally:
        one.close()
        two.close()


def test_more_threads_than_connections_with_etag_retries_lose_no_update(
    url: str, prefix: str
) -> None:
    from capa_core.errors import ETagMismatch

    rt = runtime_for(url, prefix, pool_max_size=2)
    store = rt.state()
    store.save("counter", 0)
    failures: list[BaseException] = []

    def increment(times: int) -> None:
        try:
            for _ in range(times):
                for _attempt in range(200):
                    item = store.get("counter")
                    assert item is not None
                    try:
                        store.save("counter", item.value + 1, etag=item.etag)
                        break
                    except ETagMismatch:
                        continue
        except BaseException as exc:  # reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=increment, args=(20,)) for _ in range(6)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not failures, failures
        assert store.get_value("counter") == 120
    finally:
        rt.close()


def test_expired_rows_are_invisible_then_purged(url: str, prefix: str) -> None:
    rt = runtime_for(url, prefix, cleanup_interval=1)
    try:
        store = rt.state()
        store.save("short", 1, ttl=1)
        item = store.get("short")
        assert item is not None and item.expires_at is not None
        assert abs(item.expires_at - (time.time() + 1)) < 0.5
        wait_for(lambda: store.get("short") is None, 3, "an expired key disappears")
        assert sql(url, f'SELECT count(*) FROM "{prefix}state"')[0][0] == 1  # still stored
        time.sleep(0.2)
        store.save("other", 2, ttl=60)  # a write after the interval purges
        keys = [row[0] for row in sql(url, f'SELECT key FROM "{prefix}state"')]
        assert keys == ["app||other"]
    finally:
        rt.close()


def test_dropped_tables_are_created_again(url: str, prefix: str) -> None:
    rt = runtime_for(url, prefix)
    try:
        rt.state().save("k", 1)
        sql(url, f'DROP TABLE "{prefix}state"')
        assert rt.state().get("k") is None
        rt.state().save("k", 2)
        assert rt.state().get_value("k") == 2
    finally:
        rt.close()


def test_driver_errors_that_are_not_transient_become_capa_errors(url: str, prefix: str) -> None:
    rt = runtime_for(url, prefix)
    try:
        with pytest.raises(CapaError, match=r"NUL|0x00"):
            rt.state().save("nul\x00key", 1)
        rt.state().save("fine", 1)  # the connection is still usable
        assert rt.state().get_value("fine") == 1
    finally:
        rt.close()


def test_a_failed_transaction_leaves_nothing_behind(url: str, prefix: str) -> None:
    from capa_core.errors import ETagMismatch
    from capa_core.types import Upsert

    rt = runtime_for(url, prefix)
    try:
        store = rt.state()
        store.save("a", 1)
        with pytest.raises(ETagMismatch):
            store.transaction([Upsert("b", 2), Upsert("a", 3, etag="stale")])
        assert store.get("b") is None
        assert store.get_value("a") == 1
    finally:
        rt.close()


# --- pub/sub wake-ups ------------------------------------------------------------------------


def test_a_waiting_pull_wakes_within_100ms_of_a_publish_from_another_connection(
    url: str, prefix: str, unique: str
) -> None:
    consumer_rt, producer_rt = runtime_for(url, prefix), runtime_for(url, prefix)
    topic = f"wake-{unique}"
    bus, producer = consumer_rt.pubsub(), producer_rt.pubsub()
    try:
        bus.pull(topic, group="g", timeout=0.05)  # declare the group, start listening
        latencies = []
        got: list[float] = []

        def pull_one() -> None:
            for message in bus.pull(topic, group="g", timeout=5):
                got.append(time.monotonic())
                message.ack()

        for n in range(5):
            got.clear()
            puller = threading.Thread(target=pull_one)
            puller.start()
            time.sleep(0.3)  # the pull is blocked on an empty queue by now
            assert not got
            published = time.monotonic()
            producer.publish(topic, n)
            puller.join(6)
            assert got, "the pull returned nothing"
            latencies.append(got[0] - published)
        assert statistics.median(latencies) < 0.1, latencies
        assert max(latencies) < 0.5, latencies
    finally:
        consumer_rt.close()
        producer_rt.close()


def test_an_idle_pull_blocks_instead_of_polling(url: str, prefix: str, unique: str) -> None:
    rt = runtime_for(url, prefix)
    bus = rt.pubsub()
    component = bus.component
    topic = f"idle-{unique}"
    try:
        bus.pull(topic, group="g", timeout=0.05)
        calls = 0
        original = component._db.execute  # type: ignore[attr-defined]

        def counting(query: str, *args: Any) -> Any:
            nonlocal calls
            calls += query == component._take  # type: ignore[attr-defined]
            return original(query, *args)

        component._db.execute = counting  # type: ignore[attr-defined]
        started = time.monotonic()
        assert bus.pull(topic, group="g", timeout=1.5) == []
        assert 1.4 < time.monotonic() - started < 3
        assert calls <= 2, f"{calls} queue queries in 1.5 s of waiting"
    finally:
        rt.close()


def test_publishing_notifies_only_while_someone_waits_on_the_topic(
    url: str, prefix: str, unique: str
) -> None:
    import psycopg

    rt = runtime_for(url, prefix)
    bus = rt.pubsub()
    quiet, waited = f"quiet-{unique}", f"waited-{unique}"
    try:
        bus.publish(quiet, 0)  # creates the tables before anyone listens
        with psycopg.connect(url, autocommit=True) as spy:
            spy.execute(f'LISTEN "{prefix}pubsub_messages"')
            bus.pull(quiet, group="g", timeout=0)  # a pull that does not wait leaves no mark
            bus.publish(quiet, 1)
            assert [n.payload for n in spy.notifies(timeout=0.3)] == []
            assert bus.pull(waited, group="g", timeout=0.1) == []  # this one waited
            bus.publish(waited, 2)
            bus.publish(quiet, 3)
            assert [n.payload for n in spy.notifies(timeout=0.3)] == [waited]
    finally:
        rt.close()


def test_a_nacked_message_comes_back_after_its_delay_without_a_publish(
    url: str, prefix: str, unique: str
) -> None:
    rt = runtime_for(url, prefix)
    bus = rt.pubsub()
    topic = f"nack-{unique}"
    try:
        bus.pull(topic, group="g", timeout=0.05)
        bus.publish(topic, "again")
        [first] = bus.pull(topic, group="g", timeout=2)
        first.nack(delay=0.5)
        started = time.monotonic()
        [second] = bus.pull(topic, group="g", timeout=3)
        waited = time.monotonic() - started
        assert (second.data, second.attempt) == ("again", 2)
        assert 0.4 < waited < 1.5
        second.ack()
    finally:
        rt.close()


# --- faults: connections cut server side -----------------------------------------------------


def test_components_recover_after_their_connections_are_terminated(
    url: str, prefix: str, unique: str
) -> None:
    name = f"capa-test-{unique}"
    own = f"{url}?application_name={name}"
    rt, other = runtime_for(own, prefix), runtime_for(url, prefix)
    topic = f"cut-{unique}"
    try:
        store, bus, config = rt.state(), rt.pubsub(), rt.configuration()
        store.save("k", "before")
        bus.pull(topic, group="g", timeout=0.05)
        changes: list[ConfigurationChange] = []
        config.subscribe([], changes.extend)
        rt.lock().try_lock("r", "me", 30)
        assert terminate(url, name) >= 4  # pooled connections of each block + two listeners

        assert store.get_value("k") == "before"  # retried on a fresh connection
        store.save("k", "after")
        assert other.state().get_value("k") == "after"
        assert rt.lock().unlock("r", "me").value == "success"

        got: list[Any] = []
        puller = threading.Thread(target=lambda: got.extend(bus.pull(topic, group="g", timeout=5)))
        puller.start()
        time.sleep(0.2)
        other.pubsub().publish(topic, "after the cut")
        puller.join(6)
        assert [m.data for m in got] == ["after the cut"]
        got[0].ack()

        # The watcher's LISTEN connection comes back by itself and sees later changes.
        deadline = time.monotonic() + 5
        while not changes and time.monotonic() < deadline:
            other.configuration().save({"probe": str(time.monotonic())})
            time.sleep(0.2)
        assert changes and changes[-1].item.key == "probe"
    finally:
        rt.close()
        other.close()


def test_large_configuration_items_reach_watchers_in_full(url: str, prefix: str) -> None:
    rt, other = runtime_for(url, prefix), runtime_for(url, prefix)
    try:
        changes: list[ConfigurationChange] = []
        rt.configuration().subscribe([], changes.extend)
        big = "x" * 20_000  # larger than a NOTIFY payload may be
        items = [ConfigurationItem("big", big, tags={"t": "1"})] + [
            ConfigurationItem(f"k{n}", "y" * 500) for n in range(40)
        ]
        other.configuration().save(items)
        wait_for(lambda: len(changes) >= 41, 3, "every change arrives")
        by_key = {c.item.key: c.item for c in changes}
        assert by_key["big"].content == big and by_key["big"].tags == {"t": "1"}
        assert by_key["k39"].content == "y" * 500
        other.configuration().delete(["big"])
        wait_for(lambda: changes[-1].deleted, 3, "the delete arrives")
        assert changes[-1].item.key == "big"
    finally:
        rt.close()
        other.close()


def test_a_forked_child_opens_its_own_connections(url: str, prefix: str, unique: str) -> None:
    rt = runtime_for(url, prefix)
    topic = f"fork-{unique}"
    try:
        store, bus = rt.state(), rt.pubsub()
        store.save("k", "parent")
        bus.pull(topic, group="g", timeout=0.05)  # the pool and the LISTEN thread are running
        pid = os.fork()
        if pid == 0:  # the child: use everything, then leave without running any cleanup
            code = 1
            try:
                signal.alarm(20)
                assert store.get_value("k") == "parent"
                store.save("child", "was here")
                bus.publish(topic, "from the child")
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's connections were left alone by the child.
        assert store.get_value("child") == "was here"
        [message] = bus.pull(topic, group="g", timeout=2)
        assert message.data == "from the child"
        message.ack()
    finally:
        rt.close()


# --- separate processes ----------------------------------------------------------------------


def holder(url: str, prefix: str, topic: str, count: str) -> None:
    """Take ``count`` messages and never acknowledge them (the test kills this process)."""
    rt = runtime_for(url, prefix, lease=LEASE)
    bus = rt.pubsub()
    got = 0
    deadline = time.monotonic() + 10
    while got < int(count) and time.monotonic() < deadline:
        for message in bus.pull(topic, group="workers", max_messages=int(count), timeout=1):
            say("got", message.data, message.attempt)
            got += 1
    say("holding")
    time.sleep(60)


def writer(url: str, prefix: str, app_id: str, count: str) -> None:
    """Save ``count`` configuration changes, one per line read from stdin, each timed."""
    rt = runtime_for(url, prefix, app_id)
    config = rt.configuration()
    config.get([])  # connect before the timing starts
    say("ready")
    for n in range(int(count)):
        if not sys.stdin.readline():
            break
        say("saving", n, time.time())
        config.save({"key": str(n)})
    rt.close()
    say("done")


ROLES: dict[str, Callable[..., None]] = {"holder": holder, "writer": writer}


class Worker(RoleProcess):
    """A child process running one of this file's ROLES."""

    def __init__(self, role: str, *args: object) -> None:
        super().__init__(__file__, role, *args)

@pytest.mark.slow
def test_messages_of_a_consumer_killed_with_sigkill_go_to_another_after_the_lease(
    url: str, prefix: str, unique: str
) -> None:
    topic = f"kill-{unique}"
    rt = runtime_for(url, prefix, lease=LEASE)
    bus = rt.pubsub()
    worker = None
    try:
        bus.pull(topic, group="workers", timeout=0.05)
        for n in range(3):
            bus.publish(topic, n)
        worker = Worker("holder", url, prefix, topic, 3)
        held = sorted(int(worker.expect("got", 15)[1][0]) for _ in range(3))
        worker.expect("holding", 5)
        assert held == [0, 1, 2]
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(5)
        killed = time.monotonic()
        taken: list[Any] = []
        while len(taken) < 3 and time.monotonic() - killed < LEASE + 5:
            taken += bus.pull(topic, group="workers", max_messages=3, timeout=1)
        assert sorted(m.data for m in taken) == [0, 1, 2]
        assert {m.attempt for m in taken} == {2}
        assert time.monotonic() - killed < LEASE + 3
        for message in taken:
            message.ack()
        assert bus.pull(topic, group="workers", timeout=0.2) == []
    finally:
        if worker is not None:
            worker.stop()
        rt.close()


@pytest.mark.slow
def test_configuration_changes_from_another_process_arrive_within_100ms(
    url: str, prefix: str
) -> None:
    rt = runtime_for(url, prefix, "cfg")
    arrived: queue.Queue[tuple[float, str]] = queue.Queue()

    def on_change(changes: list[ConfigurationChange]) -> None:
        for change in changes:
            arrived.put((time.time(), change.item.content))

    worker = Worker("writer", url, prefix, "cfg", 5)
    try:
        rt.configuration().subscribe(["key"], on_change)
        worker.expect("ready", 15)
        latencies = []
        for n in range(5):
            worker.tell("go")
            sent = float(worker.expect("saving", 5)[1][1])
            at, content = arrived.get(timeout=5)
            assert content == str(n)
            latencies.append(at - sent)
        worker.expect("done", 5)
        assert statistics.median(latencies) < 0.1, latencies
        assert max(latencies) < 0.5, latencies
    finally:
        worker.stop()
        rt.close()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ROLES[sys.argv[1]](*sys.argv[2:])
