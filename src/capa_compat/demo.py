"""`capa demo`: migrate the example Flask + Celery shop and run it on the embedded default.

Step by step, printed as it happens: copy the legacy app into a temporary directory, show the diff
`capa migrate` makes, apply it, start a real Celery worker process of the migrated app, place
orders through the Flask app, and read the results back: every message through capa pub/sub,
every result through capa state, both on one SQLite file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from .migrate.cli import migrate_paths, unified_diff
from .migrate.rules import load_rules

APP = "flask_shop"
DRIVER_TIMEOUT = 120.0  # seconds for all orders; each waits for a result up to 30 s

# Runs inside the migrated app's directory: the app's own code, driven as a user would.
DRIVER = textwrap.dedent(
    """
    import time
    from shop import create_app
    from shop.tasks import add, celery

    app = create_app()
    client = app.test_client()
    print(f"   broker  {celery.conf.broker_url!r}  backend {celery.conf.result_backend!r}")
    for items in (["apple", "pear"], ["melon"], ["apple", "durian"]):
        task_id = client.post("/orders", json={"items": items}).get_json()["task_id"]
        print(f"   POST /orders {items} -> task {task_id[:8]}...")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            body = client.get(f"/orders/{task_id}").get_json()
            if body["state"] in ("SUCCESS", "FAILURE", "REJECTED"):
                break
            time.sleep(0.05)
        print(f"   GET /orders/{task_id[:8]}... -> {body}")
    print(f"   add.delay(2, 3).get() -> {add.delay(2, 3).get(timeout=30)}")
    """
)


def example_app() -> Path:
    """The example app: packaged inside capa_compat, or in a source checkout's examples/."""
    packaged = Path(__file__).resolve().parent / "examples" / APP
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "examples" / APP


def say(text: str = "") -> None:
    print(text, flush=True)


def demo(args: argparse.Namespace) -> int:
    source = example_app()
    if not source.is_dir():
        say(f"capa demo: the example app is missing ({source}); reinstall capa-python")
        return 2
    with tempfile.TemporaryDirectory(prefix="capa-demo-") as scratch:
        base = Path(args.dir).resolve() if args.dir else Path(scratch)
        app_dir = base / APP
        if app_dir.exists():
            shutil.rmtree(app_dir)
        shutil.copytree(source, app_dir, ignore=shutil.ignore_patterns("__pycache__", "*.db*"))
        say(f"1. Copied the legacy app {APP} (Flask + Celery on Redis) to {app_dir}")

        say("2. capa migrate shows what it would change (imports only; nothing else moves):")
        rules = load_rules()
        preview = migrate_paths([str(app_dir)], rules, write=False, progress=False)
        for outcome in preview.changed:
            name = str(Path(outcome.path).relative_to(app_dir))
            before = Path(outcome.path).read_text(encoding="utf-8")
            for line in unified_diff(name, before, outcome.result.source).splitlines():
                say(f"   {line}")
        done = migrate_paths([str(app_dir)], rules, write=True, progress=False)
        say(f"   applied: {len(done.changed)} files rewritten")

        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAPA_", "SHOP_"))}
        # The one setting that changes: the broker URL names the embedded default instead of Redis.
        env["SHOP_BROKER_URL"] = "capa://default"
        env["PYTHONPATH"] = str(app_dir)
        say("3. Starting a Celery worker of the migrated app on the embedded default "
            "(SQLite file capa.db in the app directory):")
        say("   celery -A shop.tasks worker --pool threads --concurrency 2")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "--quiet", "-A", "shop.tasks", "worker",
             "--pool", "threads", "--concurrency", "2", "--loglevel", "ERROR",
             "--without-heartbeat", "--without-mingle", "--without-gossip"],
            cwd=app_dir, env=env,
        )
        try:
            say("4. Placing orders through the Flask app; the worker prices them:")
            driver = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=app_dir, env=env)
            deadline = time.monotonic() + DRIVER_TIMEOUT
            while driver.poll() is None:
                if worker.poll() is not None or time.monotonic() > deadline:
                    driver.kill()
                    driver.wait()
                    why = "the worker exited" if worker.returncode is not None else "timed out"
                    say(f"   the demo stopped: {why} (see the output above)")
                    return 1
                time.sleep(0.1)
            if driver.returncode != 0:
                say("   the app did not finish its orders (see the traceback above)")
                return 1
        finally:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        say(f"5. Done: every message and result went through capa, on {app_dir / 'capa.db'}. The")
        say("   durian order was rejected by its task and dead-lettered to the queue shop.dead.")
        say("   The same app on Redis: unset SHOP_BROKER_URL (its redis:// URL maps to capa's "
            "Redis components).")
        if args.dir:
            say(f"   The migrated app is kept in {app_dir}.")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `capa demo` to the `capa` command (entry point group capa.commands)."""
    parser = commands.add_parser(
        "demo", help="migrate the example Flask + Celery app and run it on the embedded default",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dir", help="keep the migrated app in this directory")
    parser.set_defaults(run=demo)
