"""Celery through capa_compat.celery against native Celery, same servers, same worker settings.

For each broker (Redis, then RabbitMQ when it is up), in one run: a ``celery worker`` subprocess
per side (same concurrency), 2,000 tasks ``.delay()``ed and their results collected (tasks/s),
then single-task round trips (delay + get: p50, p99). The sides take turns, round by round;
medians of the rounds; prints the capa/native ratios (throughput: higher is better; latency:
lower is better).

    python bench/celery_vs_native.py [--tasks 2000] [--rounds 5] [--concurrency 2] [--broker redis]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REDIS = "redis://127.0.0.1:6379/3"
AMQP = "amqp://guest:guest@127.0.0.1:5672//"
PIKA_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"  # the same vhost as pika spells it

PROJECT = '''
import os
if os.environ["BENCH_SIDE"] == "capa":
    from capa_compat.celery import Celery
else:
    from celery import Celery
app = Celery("benchproj", broker=os.environ["BENCH_BROKER"], backend=os.environ["BENCH_BACKEND"])
app.conf.update(
    task_default_queue=os.environ["BENCH_QUEUE"],
    result_backend_transport_options={"global_keyprefix": os.environ["BENCH_QUEUE"]},
    broker_transport_options={"topic_prefix": os.environ["BENCH_QUEUE"] + "."},
    worker_hijack_root_logger=False,
)

@app.task
def add(x, y):
    return x + y
'''


def reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class Side:
    """One configuration (capa or native) with its worker process and its app in this process."""

    def __init__(self, side: str, broker: str, backend: str, workdir: Path, concurrency: int):
        self.side = side
        self.env = {
            **os.environ,
            "BENCH_SIDE": side,
            "BENCH_BROKER": broker,
            "BENCH_BACKEND": backend,
            "BENCH_QUEUE": f"bench-{side}-{uuid.uuid4().hex[:8]}",
            "PYTHONPATH": os.pathsep.join([str(workdir), *sys.path]),
        }
        self.workdir = workdir
        self.concurrency = concurrency
        self.worker: subprocess.Popen[bytes] | None = None
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("BENCH_")})
        sys.modules.pop("benchproj", None)
        sys.path.insert(0, str(workdir))
        import benchproj

        self.app, self.add = benchproj.app, benchproj.add

    def start(self) -> None:
        log = open(self.workdir / f"{self.side}.log", "wb")  # noqa: SIM115
        self.worker = subprocess.Popen(
            [str(Path(sys.executable).with_name("celery")), "-A", "benchproj", "worker",
             "-c", str(self.concurrency), "-l", "warning", "--without-gossip",
             "--without-mingle", "--without-heartbeat", "-n", f"{self.side}@%h"],
            cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:  # warm up: the first round trip also waits for the worker to be ready
            try:
                self.add.delay(1, 1).get(timeout=5)
                return
            except Exception:
                if time.monotonic() > deadline or self.worker.poll() is not None:
                    raise

    def stop(self) -> None:
        if self.worker is not None and self.worker.poll() is None:
            os.killpg(self.worker.pid, signal.SIGTERM)
            try:
                self.worker.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.worker.pid, signal.SIGKILL)

    def throughput(self, tasks: int) -> float:
        started = time.perf_counter()
        results = [self.add.delay(i, i) for i in range(tasks)]
        for n, result in enumerate(results):
            assert result.get(timeout=120) == 2 * n
        return tasks / (time.perf_counter() - started)

    def latencies(self, count: int) -> list[float]:
        out = []
        for i in range(count):
            started = time.perf_counter()
            assert self.add.delay(i, 1).get(timeout=30) == i + 1
            out.append(time.perf_counter() - started)
        return out


def delete_rabbitmq_queues(token: str) -> None:
    """Remove the queues a run left on RabbitMQ (every capa group there is a quorum queue)."""
    try:
        listed = subprocess.run(["rabbitmqctl", "list_queues", "name", "-q"],
                                capture_output=True, text=True, timeout=60).stdout.split()
        import pika

        connection = pika.BlockingConnection(pika.URLParameters(PIKA_URL))
        channel = connection.channel()
        for name in listed:
            if token in name:
                channel.queue_delete(name)
        connection.close()
    except Exception as exc:  # clean-up is best effort
        print(f"  (could not remove leftover RabbitMQ queues: {exc})")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(label: str, broker: str, backend: str, args: argparse.Namespace) -> None:
    print(f"\n== {label}: broker {broker}, result backend {backend}, "
          f"{args.concurrency} worker processes a side, {args.tasks} tasks x {args.rounds} rounds")
    rates: dict[str, list[float]] = {"native": [], "capa": []}
    p50s: dict[str, list[float]] = {"native": [], "capa": []}
    p99s: dict[str, list[float]] = {"native": [], "capa": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "benchproj.py").write_text(PROJECT)
        sides = {side: Side(side, broker, backend, workdir, args.concurrency)
                 for side in ("native", "capa")}
        try:
            for bench in sides.values():
                bench.start()
            # Rounds alternate between the sides, so a slow spell of the machine weighs on
            # both alike; each side's worker idles while the other one runs.
            for _ in range(args.rounds):
                for side, bench in sides.items():
                    rates[side].append(bench.throughput(args.tasks))
                for side, bench in sides.items():
                    lat = bench.latencies(args.latency_samples)
                    p50s[side].append(percentile(lat, 0.5))
                    p99s[side].append(percentile(lat, 0.99))
        finally:
            for bench in sides.values():
                bench.stop()
                if broker.startswith("amqp"):
                    delete_rabbitmq_queues(bench.env["BENCH_QUEUE"])
    figures = {
        side: {"rate": statistics.median(rates[side]), "p50": statistics.median(p50s[side]),
               "p99": statistics.median(p99s[side])}
        for side in rates
    }
    for side, f in figures.items():
        print(f"{side:>7}: {f['rate']:8.0f} tasks/s   round trip p50 {f['p50'] * 1e3:6.2f} ms"
              f"   p99 {f['p99'] * 1e3:6.2f} ms")
    capa, native = figures["capa"], figures["native"]
    print(f"  ratio capa/native: throughput {capa['rate'] / native['rate']:.2f} (target >= 1.0),"
          f" p50 {capa['p50'] / native['p50']:.2f} (target <= 1.2),"
          f" p99 {capa['p99'] / native['p99']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--broker", choices=["all", "redis", "rabbitmq"], default="all")
    args = parser.parse_args()
    if not reachable(6379):
        sys.exit("Redis is not reachable on 127.0.0.1:6379 (see SERVICES.md to start it)")
    if args.broker in ("all", "redis"):
        run("Redis", REDIS, REDIS, args)
    if args.broker == "redis":
        return
    if reachable(5672):
        # Same result backend on both sides (Redis), so the broker is what differs.
        run("RabbitMQ", AMQP, REDIS, args)
    else:
        print("\nRabbitMQ is not reachable on 127.0.0.1:5672: skipped")


if __name__ == "__main__":
    main()
