"""The PostgreSQL components against raw psycopg running the equivalent SQL, in one run.

Run: python bench/postgres_vs_raw.py [--url URL] [--calls N] [--rounds R]
(reads run N calls a round, writes N/4, round trips of one message N/10, of ten N/100)
Prints ops/s of each operation through capa and through raw psycopg, and the ratio of their
times (capa/raw; targets: at most 1.10 for state, 1.20 for pub/sub). Medians over rounds; the two
sides alternate round by round so machine noise hits both alike. The raw side is a competent
hand-written client: one autocommit connection, one reused cursor (psycopg prepares repeated
statements itself), on tables of its own made with the components' DDL.

Rows:
- state get/save, client (JSON): the StateStore API on a JSON value against psycopg plus
  json.dumps/json.loads running the same statements: SELECT value, etag and expiry of the live
  row by key / INSERT ... ON CONFLICT DO UPDATE of value, etag and expiry.
- state get/save, SPI (bytes): the component on bytes against psycopg on bytes.
- publish+pull+ack: one message through a group, raw payload (no CloudEvents envelope): capa's
  publish, pull and ack against the INSERT, the FOR UPDATE SKIP LOCKED lease UPDATE ... RETURNING
  and the DELETE a hand-written queue runs (it neither fans out to groups nor sends NOTIFY to wake
  waiting consumers, which capa's publish does); the same on the component on bytes (SPI); with
  ten messages a batch; and with the CloudEvents envelope the API adds by default, for
  information.

The tables (prefix bench_<random>_) are dropped at the end. Every write commits on both sides, so
writes mostly measure the disk's fsync; --synchronous-commit off (for both sides) leaves the
client, protocol and SQL costs, which is where the two can differ.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from collections.abc import Callable
from urllib.parse import quote

import psycopg
from psycopg.types.json import Jsonb

from capa_core import Runtime
from capa_core.components.postgres import PostgresPubSub, PostgresState
from capa_core.types import SetRequest

VALUE = {"user": 42, "name": "Ada", "roles": ["admin", "dev"], "active": True}
LEASE = 30.0
URL = "postgresql://postgres@127.0.0.1:5432/test"


def per_call_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("CAPA_BENCH_POSTGRES_URL", URL))
    parser.add_argument(
        "--synchronous-commit", choices=("on", "off"), default="on",
        help="off: commits do not wait for the WAL flush (both sides), which takes the disk's "
        "fsync time, identical for both but noisy on a shared machine, out of the comparison",
    )
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    token = uuid.uuid4().hex[:8]
    capa_prefix, raw_prefix = f"bench_{token}_capa_", f"bench_{token}_raw_"
    url = args.url
    if args.synchronous_commit == "off":
        url += ("&" if "?" in url else "?") + "options=" + quote("-c synchronous_commit=off")
    print(f"synchronous_commit={args.synchronous_commit}, {args.calls} calls, {args.rounds} rounds")
    try:
        run(url, capa_prefix, raw_prefix, args.calls, args.rounds)
    finally:
        with psycopg.connect(args.url, autocommit=True) as conn:
            for (table,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE tablename LIKE %s",
                (f"bench\\_{token}\\_%",),
            ).fetchall():
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')


def run(url: str, capa_prefix: str, raw_prefix: str, calls: int, rounds: int) -> None:
    table = {"url": url, "table_prefix": capa_prefix}
    runtime = Runtime.from_mapping(
        {"capa": {"app_id": "bench"}, "state": {"default": table}, "pubsub": {"default": table}}
    )
    store = runtime.state()
    bus = runtime.pubsub()
    state_component = runtime.component("state", "default", PostgresState)
    pubsub_component = runtime.component("pubsub", "default", PostgresPubSub)

    raw = psycopg.connect(url, autocommit=True)
    # The raw side gets the same tables, made by the components' own DDL under its prefix.
    for component in (
        PostgresState("raw", {"url": url, "table_prefix": raw_prefix}),
        PostgresPubSub("raw", {"url": url, "table_prefix": raw_prefix}),
    ):
        component._db.run(lambda cur: None)
        component.close()
    cur = raw.cursor()
    state_t, queue_t = f'"{raw_prefix}state"', f'"{raw_prefix}pubsub_messages"'

    # What a hand-written store with ETags and TTLs runs: read the live row with its etag and
    # expiry, upsert value, a fresh etag and the expiry.
    get_sql = (
        f"SELECT value, etag, date_part('epoch', expires_at) FROM {state_t} WHERE key = %s "
        "AND (expires_at IS NULL OR expires_at > now())"
    )
    upsert_sql = (
        f"INSERT INTO {state_t} (key, value, etag, expires_at) VALUES (%s, %s, %s, NULL) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, etag = EXCLUDED.etag, "
        "expires_at = EXCLUDED.expires_at"
    )
    encoded = json.dumps(VALUE).encode()
    cur.execute(upsert_sql, ("bench||key", encoded, os.urandom(8).hex()))
    store.save("key", VALUE)

    def raw_get_json() -> object:
        row = cur.execute(get_sql, ("bench||key",)).fetchone()
        assert row is not None
        return json.loads(row[0])

    def raw_save_json() -> object:
        etag = os.urandom(8).hex()
        cur.execute(upsert_sql, ("bench||key", json.dumps(VALUE).encode(), etag))
        return etag

    def raw_get_bytes() -> object:
        return cur.execute(get_sql, ("bench||key",)).fetchone()

    def raw_save_bytes() -> object:
        etag = os.urandom(8).hex()
        cur.execute(upsert_sql, ("bench||key", encoded, etag))
        return etag

    spi_request = SetRequest("bench||key", encoded, None, False, None)

    insert_sql = (
        f"INSERT INTO {queue_t} (topic, grp, payload, metadata) VALUES ('orders', 'billing', "
        "%s, %s)"
    )
    take_sql = (
        f"WITH next AS (SELECT id FROM {queue_t} WHERE topic = 'orders' AND grp = 'billing' "
        "AND visible_at <= now() ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
        f"UPDATE {queue_t} q SET attempt = q.attempt + 1, "
        "visible_at = now() + %s * interval '1 second' FROM next WHERE q.id = next.id "
        "RETURNING q.id, q.payload, q.attempt, q.metadata"
    )
    delete_sql = f"DELETE FROM {queue_t} WHERE id = %s"
    headers = {"content-type": "application/json"}

    def raw_round_trip(batch: int, codec: bool = True) -> Callable[[], object]:
        def round_trip() -> object:
            for _ in range(batch):
                data = json.dumps(VALUE).encode() if codec else encoded
                cur.execute(insert_sql, (data, Jsonb(headers)))
            rows = cur.execute(take_sql, (batch, LEASE)).fetchall()
            assert len(rows) == batch
            for row in rows:
                if codec:
                    json.loads(row[1])
                cur.execute(delete_sql, (row[0],))
            return rows

        return round_trip

    def spi_round_trip() -> object:
        pubsub_component.publish("orders", encoded, headers)
        [delivery] = pubsub_component.pull("orders", "billing", 1, 0, LEASE)
        pubsub_component.ack("orders", "billing", [delivery.id])
        return delivery

    bus.pull("orders", group="billing", timeout=0)  # the group exists before timing

    def capa_round_trip(batch: int, raw_payload: bool) -> Callable[[], object]:
        def round_trip() -> object:
            for _ in range(batch):
                bus.publish("orders", VALUE, raw=raw_payload)
            messages = bus.pull("orders", group="billing", max_messages=batch, timeout=0)
            assert len(messages) == batch
            for message in messages:
                message.ack()
            return messages

        return round_trip

    cases: list[tuple[str, Callable[[], object], Callable[[], object], int]] = [
        ("state get, client (JSON)", lambda: store.get("key"), raw_get_json, calls),
        ("state save, client (JSON)", lambda: store.save("key", VALUE), raw_save_json,
         calls // 4),
        ("state get, SPI (bytes)", lambda: state_component.get("bench||key"), raw_get_bytes,
         calls),
        ("state save, SPI (bytes)", lambda: state_component.set(spi_request), raw_save_bytes,
         calls // 4),
        ("publish+pull+ack x1, raw payload", capa_round_trip(1, True), raw_round_trip(1),
         max(1, calls // 10)),
        ("publish+pull+ack x1, SPI (bytes)", spi_round_trip, raw_round_trip(1, codec=False),
         max(1, calls // 10)),
        ("publish+pull+ack x10, raw payload", capa_round_trip(10, True), raw_round_trip(10),
         max(1, calls // 100)),
        ("publish+pull+ack x1, CloudEvent", capa_round_trip(1, False), raw_round_trip(1),
         max(1, calls // 10)),
    ]
    for _, capa_fn, raw_fn, _ in cases:  # warm up: prepared statements, pages, the pool
        for _ in range(20):
            capa_fn()
            raw_fn()

    print(f"{'operation':<36}{'capa ops/s':>12}{'raw ops/s':>12}{'ratio':>8}")
    for name, capa_fn, raw_fn, n in cases:
        capa_ns, raw_ns = [], []
        for round_ in range(rounds):
            if round_ % 2:  # alternate who goes first, so a trend in machine load hits both
                raw_ns.append(per_call_ns(raw_fn, n))
                capa_ns.append(per_call_ns(capa_fn, n))
            else:
                capa_ns.append(per_call_ns(capa_fn, n))
                raw_ns.append(per_call_ns(raw_fn, n))
        capa_median, raw_median = statistics.median(capa_ns), statistics.median(raw_ns)
        print(
            f"{name:<36}{1e9 / capa_median:>12,.0f}{1e9 / raw_median:>12,.0f}"
            f"{capa_median / raw_median:>8.2f}"
        )
    cur.close()
    raw.close()
    runtime.close()


if __name__ == "__main__":
    main()
