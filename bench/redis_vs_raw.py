"""The Redis components against raw redis-py running the equivalent commands, in one run.

Run: python bench/redis_vs_raw.py [--calls N] [--messages M] [--rounds R] [--url URL]
Uses database 4 of the local Redis (redis://127.0.0.1:6379/4) under a key prefix of its own,
removed at the end. Prints ops/s through capa and through raw redis-py and the ratio of their
times (capa/raw; targets: at most 1.10 for state, 1.20 for pub/sub). Medians over rounds; the
two sides alternate round by round so machine noise hits both alike.

Rows:
- state get/save, client: the StateStore API on a JSON value against GET/SET plus json.
- state get/save, SPI: the component on bytes against GET/SET on the same bytes.
- publish+consume: M messages published one by one, then consumed in pulls of 10 and acked one
  by one; capa through PubSub.publish(raw=True) / PubSub.pull / Message.ack, raw as XADD,
  XREADGROUP COUNT 10 and XACK. Then the same with the CloudEvents envelope the API adds by
  default (the raw side unchanged), for information.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable

import redis

from capa_core import Runtime
from capa_core.components.redis import RedisState
from capa_core.types import SetRequest

VALUE = {"user": 42, "name": "Ada", "roles": ["admin", "dev"], "active": True}


def per_call_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=3_000)
    parser.add_argument("--messages", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--url", default="redis://127.0.0.1:6379/4")
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    raw = redis.Redis.from_url(args.url)
    try:
        run(args.url, prefix, raw, args.calls, args.messages, args.rounds)
    finally:
        for key in raw.scan_iter(match=prefix + "*", count=1000):
            raw.unlink(key)
        raw.close()


def run(url: str, prefix: str, raw: redis.Redis, calls: int, messages: int, rounds: int) -> None:
    runtime = Runtime.from_mapping({
        "capa": {"app_id": "bench", "default_url": "memory://"},
        "state": {"default": {"url": url, "keyPrefix": prefix}},
        "pubsub": {"default": {"url": url, "keyPrefix": prefix + "capa:"}},
    })
    store = runtime.state()
    bus = runtime.pubsub()
    component = runtime.component("state", "default", RedisState)

    raw_key = prefix + "raw||key"
    encoded = json.dumps(VALUE).encode()
    raw.set(raw_key, encoded)
    store.save("key", VALUE)
    spi_request = SetRequest("bench||key", encoded, None, False, None)

    def raw_get_json() -> object:
        return json.loads(raw.get(raw_key))  # type: ignore[arg-type]

    def raw_save_json() -> object:
        return raw.set(raw_key, json.dumps(VALUE).encode())

    # Pub/sub: a group on each side before timing.
    raw_stream = prefix + "raw:orders"
    raw.xgroup_create(raw_stream, "billing", id="0", mkstream=True)
    bus.pull("orders", group="billing", timeout=0)
    body = json.dumps(VALUE).encode()

    def raw_publish_consume() -> object:
        for _ in range(messages):
            raw.xadd(raw_stream, {"data": body, "metadata": '{"content-type":"application/json"}'})
        done = 0
        while done < messages:
            reply = raw.xreadgroup("billing", "bench", {raw_stream: ">"}, count=10)
            for entry_id, fields in reply[0][1]:
                json.loads(fields[b"data"])
                json.loads(fields[b"metadata"])
                raw.xack(raw_stream, "billing", entry_id)
                done += 1
        return done

    def capa_publish_consume(envelope: bool) -> Callable[[], object]:
        def cycle() -> object:
            for _ in range(messages):
                bus.publish("orders", VALUE, raw=not envelope)
            done = 0
            while done < messages:
                for message in bus.pull("orders", group="billing", max_messages=10, timeout=1):
                    message.ack()
                    done += 1
            return done

        return cycle

    cases: list[tuple[str, Callable[[], object], Callable[[], object], int, int]] = [
        # name, capa, raw, calls per round, operations per call
        ("state get, client (JSON)", lambda: store.get("key"), raw_get_json, calls, 1),
        ("state save, client (JSON)", lambda: store.save("key", VALUE), raw_save_json, calls, 1),
        ("state get, SPI (bytes)", lambda: component.get("bench||key"),
         lambda: raw.get(raw_key), calls, 1),
        ("state save, SPI (bytes)", lambda: component.set(spi_request),
         lambda: raw.set(raw_key, encoded), calls, 1),
        ("publish+consume, raw payload", capa_publish_consume(False), raw_publish_consume, 1,
         messages),
        ("publish+consume, CloudEvent", capa_publish_consume(True), raw_publish_consume, 1,
         messages),
    ]
    for _, capa_fn, raw_fn, n, _ in cases:  # warm up connections and scripts
        for _ in range(min(n, 200)):
            capa_fn()
            raw_fn()

    print(f"{url}, {rounds} rounds, medians")
    print(f"{'operation':<32}{'capa ops/s':>12}{'raw ops/s':>12}{'ratio':>8}")
    for name, capa_fn, raw_fn, n, per_call in cases:
        capa_ns, raw_ns = [], []
        for _ in range(rounds):
            capa_ns.append(per_call_ns(capa_fn, n) / per_call)
            raw_ns.append(per_call_ns(raw_fn, n) / per_call)
        capa_median, raw_median = statistics.median(capa_ns), statistics.median(raw_ns)
        print(
            f"{name:<32}{1e9 / capa_median:>12,.0f}{1e9 / raw_median:>12,.0f}"
            f"{capa_median / raw_median:>8.2f}"
        )
    runtime.close()


if __name__ == "__main__":
    main()
