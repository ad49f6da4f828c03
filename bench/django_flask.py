"""Django's cache and Flask's config on capa against the native ones, in one run.

Run: python bench/django_flask.py [--calls N] [--rounds R] [--url redis://127.0.0.1:6379/2]

Rows (ops/s of each side, medians over rounds, and the median per-round ratio of times
capa/native; lower is better, 1.00 is parity):
- CapaCache on a capa Redis state component against Django's built-in RedisCache on the same
  Redis database (db 2, keys under a prefix of this run, removed at the end), and against
  django-redis when it is installed: get (hit), set, get_many of 10 keys. Target: <= 1.10.
- CapaCache on the memory component against LocMemCache: the same operations. Target: <= 1.50.
- app.config[key] reads, capa_compat.flask (with from_capa subscribed) against flask.Config.
  Target: <= 1.05.
- Propagation of a configuration change: from save() in one runtime to app.config showing it in
  another (memory, SQLite, Redis components): p50 and p99 in milliseconds. Target: 100 ms.

The two sides of a row take turns in small chunks inside each round (which one goes first
alternates), so drift of a shared machine hits both alike.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import django
from django.conf import settings

settings.configure(SECRET_KEY="bench", USE_TZ=True)
django.setup()

import flask  # noqa: E402
from django.core.cache.backends.locmem import LocMemCache  # noqa: E402
from django.core.cache.backends.redis import RedisCache  # noqa: E402
from harness import compare  # noqa: E402 (bench/ is on sys.path when run as a script)

from capa_compat.django.cache import CapaCache  # noqa: E402
from capa_compat.flask import Flask as CapaFlask  # noqa: E402
from capa_core import Runtime  # noqa: E402

VALUE = {"user": 42, "name": "Ada", "roles": ["admin", "dev"], "active": True}
Batch = Callable[[int], object]


def cache_ops(cache: object) -> dict[str, Batch]:
    """get (hit), set and get_many(10) batches on a Django cache."""
    keys = [f"many{i}" for i in range(10)]
    cache.set_many({k: VALUE for k in keys}, timeout=None)  # type: ignore[attr-defined]
    cache.set("hit", VALUE, timeout=None)  # type: ignore[attr-defined]

    def get(n: int) -> None:
        for _ in range(n):
            cache.get("hit")  # type: ignore[attr-defined]

    def put(n: int) -> None:
        for i in range(n):
            cache.set(f"k{i % 100}", VALUE, timeout=300)  # type: ignore[attr-defined]

    def get_many(n: int) -> None:
        for _ in range(n):
            cache.get_many(keys)  # type: ignore[attr-defined]

    return {"get": get, "set": put, "get_many(10)": get_many}


def row(label: str, target: float, capa: float, native: float, ratio: float) -> None:
    verdict = "ok" if ratio <= target else "OVER"
    print(f"  {label:<34} capa {capa:>10,.0f} ops/s   native {native:>10,.0f} ops/s   "
          f"ratio {ratio:5.2f}  (target <= {target:.2f}: {verdict})")


def bench_caches(name: str, capa: object, native: object, target: float, args: argparse.Namespace,
                 calls: int) -> None:
    ours, theirs = cache_ops(capa), cache_ops(native)
    for op in ours:
        chunk = max(1, calls // 20)
        row(f"{name} {op}", target, *compare(ours[op], theirs[op], calls, chunk, args.rounds))


def bench_config_reads(args: argparse.Namespace) -> None:
    runtime = Runtime.from_mapping({"capa": {"default_url": "memory://"}})
    runtime.configuration().save({"POOL": "5", "NAME": "shop"})
    ours = CapaFlask("bench")
    ours.config.from_capa(runtime=runtime)
    theirs = flask.Flask("bench")
    theirs.config.update(POOL=5, NAME="shop")
    c1, c2 = ours.config, theirs.config

    def read_ours(n: int) -> None:
        for _ in range(n):
            c1["POOL"]
            c1["NAME"]

    def read_theirs(n: int) -> None:
        for _ in range(n):
            c2["POOL"]
            c2["NAME"]

    total = args.calls * 100
    row("app.config[key] (2 reads)", 1.05,
        *compare(read_ours, read_theirs, total, total // 50, args.rounds))
    ours.config.close_capa()
    runtime.close()


def bench_propagation(label: str, table: dict[str, object], changes: int) -> None:
    document = {"capa": {"default_url": "memory://", "app_id": f"bench-{uuid.uuid4().hex[:8]}"},
                "configuration": {"app": table}}
    reader, writer = Runtime.from_mapping(document), Runtime.from_mapping(document)
    store = writer.configuration("app")
    store.save({"VERSION": "0"})
    app = CapaFlask("bench")
    app.config.from_capa("app", runtime=reader)
    latencies = []
    try:
        for i in range(1, changes + 1):
            start = time.perf_counter()
            store.save({"VERSION": str(i)})
            deadline = start + 5
            while app.config["VERSION"] != i:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"{label}: change {i} not seen within 5 s")
                time.sleep(0.0002)
            latencies.append((time.perf_counter() - start) * 1000)
    finally:
        store.delete(["VERSION"])
        app.config.close_capa()
        reader.close()
        writer.close()
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    verdict = "ok" if p99 <= 100 else "OVER"
    print(f"  change propagation, {label:<12} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   "
          f"(target 100 ms: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=2_000, help="cache calls per round")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--changes", type=int, default=100, help="config changes per backend")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/2")
    args = parser.parse_args()
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    print(f"python {sys.version.split()[0]}, django {django.get_version()}, "
          f"flask {importlib.metadata.version('flask')}")

    print("Django cache on Redis (same server, same database):")
    # Each side its own KEY_PREFIX: capa stores a small header with each value, so the two
    # formats must not meet under one key.
    capa_redis = CapaCache(args.url, {"KEY_PREFIX": prefix + "-capa", "TIMEOUT": 300})
    django_redis_cache = RedisCache(args.url, {"KEY_PREFIX": prefix + "-django", "TIMEOUT": 300})
    bench_caches("vs RedisCache", capa_redis, django_redis_cache, 1.10, args, args.calls)
    try:
        from django_redis.cache import RedisCache as DjangoRedisCache
    except ImportError:
        print("  (django-redis is not installed: skipped)")
    else:
        other = DjangoRedisCache(args.url, {"KEY_PREFIX": prefix + "-dr", "TIMEOUT": 300})
        bench_caches("vs django-redis", capa_redis, other, 1.10, args, args.calls)
        other.delete_pattern("*")  # this run's keys only: the pattern is under its KEY_PREFIX
    capa_redis.clear()
    django_redis_cache.delete_many(
        ["hit", *[f"many{i}" for i in range(10)], *[f"k{i}" for i in range(100)]]
    )

    print("Django cache in process:")
    capa_memory = CapaCache(f"memory://bench-{prefix}", {"TIMEOUT": 300})
    locmem = LocMemCache(f"bench-{prefix}", {"TIMEOUT": 300})
    bench_caches("memory vs LocMemCache", capa_memory, locmem, 1.50, args, args.calls * 5)

    print("Flask config:")
    bench_config_reads(args)
    with tempfile.TemporaryDirectory() as tmp:
        bench_propagation("memory", {"url": "memory://", "namespace": prefix}, args.changes)
        bench_propagation("sqlite", {"url": f"sqlite:///{Path(tmp) / 'capa.db'}"}, args.changes)
        bench_propagation("redis", {"url": args.url}, args.changes)


if __name__ == "__main__":
    main()
