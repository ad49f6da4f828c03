"""The timing loop the comparison benchmarks share: both sides in alternating chunks, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

Batch = Callable[[int], object]  # runs an operation n times


def compare(capa: Batch, native: Batch, total: int, chunk: int, rounds: int) -> tuple[float, ...]:
    """Median ops/s of capa, of native, and the median of per-round time ratios capa/native.

    Within a round the two sides take turns in chunks (the order flips every chunk), so machine
    noise lands on both alike.
    """
    capa_rates, native_rates, ratios = [], [], []
    for r in range(rounds):
        spent = {"capa": 0, "native": 0}
        sides = [("capa", capa), ("native", native)]
        for c in range(total // chunk):
            for side, batch in sides if (r + c) % 2 == 0 else sides[::-1]:
                start = time.perf_counter_ns()
                batch(chunk)
                spent[side] += time.perf_counter_ns() - start
        done = total // chunk * chunk
        capa_rates.append(done / spent["capa"] * 1e9)
        native_rates.append(done / spent["native"] * 1e9)
        ratios.append(spent["capa"] / spent["native"])
    return (
        statistics.median(capa_rates), statistics.median(native_rates), statistics.median(ratios)
    )
