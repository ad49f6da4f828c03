"""Per-call cost of the API layer: capa on the memory components against a dict and a queue.Queue.

Run: python bench/api_overhead.py [--calls N] [--rounds R]
Each row times one operation through capa (Runtime on memory://) and the same operation done
natively in the same process, alternating round by round so machine noise hits both alike.
It prints the median ns/op of each, their ratio, and the microseconds capa adds per call (the
target: a few). Values are the same dict on both sides; "JSON" rows make the native side encode
or decode JSON too, since a store holding bytes must; "bytes" rows store bytes on both sides.

Rows:
- state get / save: StateStore.get / save (key prefix, codec, ETag, dispatch point, component)
  against dict lookups and assignments.
- publish+pull+ack: one message through a group with PubSub.publish(raw=True), pull, ack,
  against queue.Queue put, get_nowait, task_done of the JSON bytes; then the same with the
  CloudEvents envelope publish adds by default (id, time, attributes), for information.
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import time
from collections.abc import Callable

from capa_core import Runtime

VALUE = {"user": 42, "name": "Ada", "roles": ["admin", "dev"], "active": True}
BYTES = json.dumps(VALUE).encode()


def per_call_ns(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        fn()
    return (time.perf_counter_ns() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    runtime = Runtime.from_mapping(
        {"capa": {"default_url": "memory://bench-api", "app_id": "bench"}}, env={}
    )
    store = runtime.state()
    bus = runtime.pubsub()
    store.save("json", VALUE)
    store.save("bytes", BYTES)
    bus.pull("orders", group="billing", timeout=0)  # declare the group before timing

    native: dict[str, object] = {"bench||json": json.dumps(VALUE).encode(), "bench||bytes": BYTES}
    fifo: queue.Queue[bytes] = queue.Queue()

    def native_get_json() -> object:
        return json.loads(native["bench||json"])  # type: ignore[arg-type]

    def native_save_json() -> None:
        native["bench||json"] = json.dumps(VALUE).encode()

    def native_get_bytes() -> object:
        return native["bench||bytes"]

    def native_save_bytes() -> None:
        native["bench||bytes"] = BYTES

    def native_round_trip() -> object:
        fifo.put(json.dumps(VALUE).encode())
        data = json.loads(fifo.get_nowait())
        fifo.task_done()
        return data

    def capa_round_trip(raw: bool) -> Callable[[], object]:
        def round_trip() -> object:
            bus.publish("orders", VALUE, raw=raw)
            (message,) = bus.pull("orders", group="billing", max_messages=1, timeout=0)
            message.ack()
            return message.data

        return round_trip

    cases: list[tuple[str, Callable[[], object], Callable[[], object], int]] = [
        ("state get (JSON)", lambda: store.get("json"), native_get_json, args.calls),
        ("state save (JSON)", lambda: store.save("json", VALUE), native_save_json, args.calls),
        ("state get (bytes)", lambda: store.get("bytes"), native_get_bytes, args.calls),
        ("state save (bytes)", lambda: store.save("bytes", BYTES), native_save_bytes,
         args.calls),
        ("publish+pull+ack (raw)", capa_round_trip(True), native_round_trip, args.calls // 4),
        ("publish+pull+ack (CloudEvent)", capa_round_trip(False), native_round_trip,
         args.calls // 4),
    ]
    for _, capa_fn, native_fn, _ in cases:  # warm up
        for _ in range(500):
            capa_fn()
            native_fn()

    print(
        f"{'operation':<31}{'capa ns/op':>11}{'native ns/op':>13}{'ratio':>8}"
        f"{'added us/call':>15}"
    )
    for name, capa_fn, native_fn, calls in cases:
        capa_ns, native_ns = [], []
        for _ in range(args.rounds):
            capa_ns.append(per_call_ns(capa_fn, calls))
            native_ns.append(per_call_ns(native_fn, calls))
        capa_median, native_median = statistics.median(capa_ns), statistics.median(native_ns)
        print(
            f"{name:<31}{capa_median:>11,.0f}{native_median:>13,.0f}"
            f"{capa_median / native_median:>8.1f}{(capa_median - native_median) / 1000:>15.2f}"
        )
    runtime.close()


if __name__ == "__main__":
    main()
