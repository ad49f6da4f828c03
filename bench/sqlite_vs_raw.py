"""The SQLite components against raw sqlite3 running the same SQL on its own file, in one run.

Run: python bench/sqlite_vs_raw.py [--calls N] [--rounds R]
Prints ops/s of each operation through capa and through raw sqlite3 (medians over rounds), and
the median over rounds of the ratio of their times (capa/raw; the target is at most 1.3). Each
round times a batch of each side back to back, in alternating order, so machine noise hits both
alike. Both files live in one temporary directory, in WAL mode
with synchronous=NORMAL, with the same tables (the components' own DDL) and statements.

Rows:
- state get/save, client: the StateStore API (JSON values) against sqlite3 plus json.
- state get/save, SPI: the component on bytes against sqlite3 on bytes (the component's own cost).
- publish+pull+ack: one message through a group, raw payload (no CloudEvents envelope), against
  the INSERT / lease UPDATE / SELECT / DELETE a hand-written queue on these tables would run; and
  the same with the CloudEvents envelope the API adds by default, for information.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from capa_core import Runtime
from capa_core.components.sqlite import SqlitePubSub, SqliteState
from capa_core.types import SetRequest

VALUE = {"user": 42, "name": "Ada", "roles": ["admin", "dev"], "active": True}
LEASE = 30.0


def per_call_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def raw_connection(path: Path, ddl: tuple[str, ...]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, timeout=5.0, cached_statements=256)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    for statement in ddl:
        conn.execute(statement)
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=41)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), args.calls, args.rounds)


def run(tmp: Path, calls: int, rounds: int) -> None:
    url = f"sqlite:///{tmp / 'capa.db'}"
    runtime = Runtime.from_mapping({"capa": {"default_url": url, "app_id": "bench"}})
    store = runtime.state()
    bus = runtime.pubsub()
    state_component = runtime.component("state", "default", SqliteState)
    pubsub_component = runtime.component("pubsub", "default", SqlitePubSub)

    # Raw sqlite3 on its own file with the components' tables.
    raw = raw_connection(tmp / "raw.db", state_component._ddl() + pubsub_component._ddl())
    get_sql = "SELECT value, etag, expires_at FROM capa_state WHERE key = ?"
    upsert_sql = (
        "INSERT INTO capa_state (key, value, etag, expires_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value, etag = excluded.etag, "
        "expires_at = excluded.expires_at"
    )
    encoded = json.dumps(VALUE).encode()
    raw.execute(upsert_sql, ("bench||key", encoded, os.urandom(8).hex(), None))
    store.save("key", VALUE)

    def raw_get_json() -> object:
        row = raw.execute(get_sql, ("bench||key",)).fetchone()
        return json.loads(row[0]), row[1], row[2]

    def raw_save_json() -> object:
        etag = os.urandom(8).hex()
        raw.execute(upsert_sql, ("bench||key", json.dumps(VALUE).encode(), etag, None))
        return etag

    def raw_get_bytes() -> object:
        return raw.execute(get_sql, ("bench||key",)).fetchone()

    def raw_save_bytes() -> object:
        etag = os.urandom(8).hex()
        raw.execute(upsert_sql, ("bench||key", encoded, etag, None))
        return etag

    spi_request = SetRequest("bench||key", encoded, None, False, None)

    # Pub/sub: the group exists on both sides before timing.
    raw.execute("INSERT INTO capa_groups (topic, name) VALUES ('orders', 'billing')")
    gid = raw.execute("SELECT id FROM capa_groups WHERE name = 'billing'").fetchone()[0]
    bus.pull("orders", group="billing", timeout=0)
    lease_sql = (
        "UPDATE capa_deliveries SET attempt = attempt + 1, leased = 1, visible_at = ? "
        "WHERE group_id = ? "
        "AND message_id IN (SELECT message_id FROM capa_deliveries WHERE group_id = ? AND "
        "visible_at <= ? ORDER BY visible_at, message_id LIMIT ?) RETURNING message_id, attempt"
    )
    headers = {"content-type": "application/json"}

    def raw_round_trip() -> object:
        now = time.time()
        raw.execute(
            "INSERT INTO capa_messages (topic, data, metadata, published_at) VALUES (?, ?, ?, ?)",
            ("orders", json.dumps(VALUE).encode(), json.dumps(headers), now),
        )
        due = raw.execute(
            "SELECT 1 FROM capa_deliveries WHERE group_id = ? AND visible_at <= ? LIMIT 1",
            (gid, now),
        ).fetchone()
        assert due is not None
        (mid, _attempt), = raw.execute(lease_sql, (now + LEASE, gid, gid, now, 1)).fetchall()
        data, metadata = raw.execute(
            "SELECT data, metadata FROM capa_messages WHERE id IN (?)", (mid,)
        ).fetchone()
        json.loads(data), json.loads(metadata)
        raw.execute(
            "DELETE FROM capa_deliveries WHERE group_id = ? AND message_id IN (?)", (gid, mid)
        )
        return mid

    def capa_round_trip(raw_payload: bool) -> Callable[[], object]:
        def round_trip() -> object:
            bus.publish("orders", VALUE, raw=raw_payload)
            (message,) = bus.pull("orders", group="billing", max_messages=1, timeout=0)
            message.ack()
            return message

        return round_trip

    cases: list[tuple[str, Callable[[], object], Callable[[], object], int]] = [
        ("state get, client (JSON)", lambda: store.get("key"), raw_get_json, calls),
        ("state save, client (JSON)", lambda: store.save("key", VALUE), raw_save_json, calls),
        ("state get, SPI (bytes)", lambda: state_component.get("bench||key"), raw_get_bytes,
         calls),
        ("state save, SPI (bytes)", lambda: state_component.set(spi_request), raw_save_bytes,
         calls),
        ("publish+pull+ack, raw payload", capa_round_trip(True), raw_round_trip, calls // 5),
        ("publish+pull+ack, CloudEvent", capa_round_trip(False), raw_round_trip, calls // 5),
    ]
    for _, capa_fn, raw_fn, _ in cases:  # warm up statement caches and pages
        for _ in range(200):
            capa_fn()
            raw_fn()

    print(f"{'operation':<32}{'capa ops/s':>12}{'raw ops/s':>12}{'ratio':>8}")
    for name, capa_fn, raw_fn, n in cases:
        capa_ns, raw_ns, ratios = [], [], []
        for round_ in range(rounds):
            # Paired batches, in alternating order: a ratio compares times taken moments apart.
            if round_ % 2:
                raw_ns.append(per_call_ns(raw_fn, n))
                capa_ns.append(per_call_ns(capa_fn, n))
            else:
                capa_ns.append(per_call_ns(capa_fn, n))
                raw_ns.append(per_call_ns(raw_fn, n))
            ratios.append(capa_ns[-1] / raw_ns[-1])
        print(
            f"{name:<32}{1e9 / statistics.median(capa_ns):>12,.0f}"
            f"{1e9 / statistics.median(raw_ns):>12,.0f}{statistics.median(ratios):>8.2f}"
        )
    raw.close()
    runtime.close()


if __name__ == "__main__":
    main()
