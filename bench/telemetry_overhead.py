"""Cost of telemetry on a memory-component state get: off, no-op API only, SDK with exporter.

Run: python bench/telemetry_overhead.py [--calls N] [--rounds R]
Prints the median ns per call of each mode and its ratio to telemetry off, measured in one run.
The no-op case calls CapaInstrumentor().instrument() with only the OpenTelemetry API present
(no SDK provider set), which is what an application gets from installing capa's extra alone.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from capa_core import Runtime


def per_call_ns(fn: Callable[[], object], calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - start) / calls)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from capa_core.telemetry import CapaInstrumentor

    runtime = Runtime.from_mapping({"capa": {"default_url": "memory://bench"}})
    store = runtime.state()
    store.save("key", {"value": 1})

    def get() -> object:
        return store.get("key")

    instrumentor = CapaInstrumentor()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def noop_on() -> None:
        instrumentor.instrument()

    def sdk_on() -> None:
        instrumentor.instrument(tracer_provider=provider)

    modes: dict[str, tuple[Callable[[], None], int]] = {
        "off": (lambda: None, args.calls),
        "no-op API": (noop_on, args.calls),
        "SDK + in-memory exporter": (sdk_on, args.calls // 10),
    }
    results: dict[str, list[float]] = {name: [] for name in modes}
    # Interleave the modes round by round so machine noise hits them alike.
    for _ in range(args.rounds):
        for name, (switch_on, calls) in modes.items():
            switch_on()
            results[name].append(per_call_ns(get, calls, 1))
            if instrumentor.is_instrumented_by_opentelemetry:
                instrumentor.uninstrument()
            exporter.clear()
    base = statistics.median(results["off"])
    print(f"{'mode':<28}{'ns/call':>10}{'ratio':>8}")
    for name, samples in results.items():
        median = statistics.median(samples)
        print(f"{name:<28}{median:>10.0f}{median / base:>8.3f}")
    runtime.close()


if __name__ == "__main__":
    main()
