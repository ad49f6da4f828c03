"""The ``capa`` command: subcommands over the standard API; with none it runs ``capa tour``."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import Any

from .errors import CapaError, ETagMismatch
from .pubsub import Message
from .runtime import Runtime
from .settings import DEFAULT_DB
from .types import ConfigurationChange, HandlerResult

Command = Callable[[argparse.Namespace], int]
WAIT = 10.0  # seconds the tour waits for a pushed message or change before calling it failed


class TourFailed(Exception):
    """Something the tour shows did not happen: the backend does not behave as the API says."""


class _Printer:
    """Writes whole lines, so lines printed by subscriber threads never interleave."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __call__(self, text: str = "") -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()


say = _Printer()


def _show(value: Any) -> str:
    return json.dumps(value, separators=(", ", ": "))


def _etag(etag: str | None) -> str:
    if not etag:
        return "no etag"
    return f"etag {etag[:8]}..." if len(etag) > 8 else f"etag {etag}"


# --- capa tour ------------------------------------------------------------------------------


@contextmanager
def _tour_runtime(
    url: str | None, directory: str | None, app_id: str
) -> Iterator[tuple[Runtime, str]]:
    """A Runtime for the tour and a sentence saying where its data lives."""
    with tempfile.TemporaryDirectory(prefix="capa-tour-") as scratch:
        base = Path(directory).resolve() if directory else Path(scratch)
        base.mkdir(parents=True, exist_ok=True)
        # env={}: the tour shows the defaults, whatever CAPA_* variables the shell has.
        if url is None:
            rt = Runtime.from_settings(cwd=base, env={}, app_id=app_id)
            where = f"the embedded default: SQLite file {base / DEFAULT_DB}"
            where += " (kept)" if directory else " (a temporary directory, removed at the end)"
        else:
            rt = Runtime.from_mapping(
                {"capa": {"default_url": url, "app_id": app_id}}, env={}, cwd=base
            )
            where = f"components from {url}"
        try:
            yield rt, where
        finally:
            rt.close()


def _tour_state(rt: Runtime) -> None:
    store = rt.state()
    say(f"1. State  ({store.component.type_name})")
    order = {"item": "book", "qty": 1}
    etag = store.save("order:1", order)
    say(f"   save  order:1 = {_show(order)}  -> {_etag(etag)}")
    item = store.get("order:1")
    if item is None or item.value != order:
        raise TourFailed(f"get returned {item!r} after a save")
    say(f"   get   order:1 -> {_show(item.value)}  {_etag(item.etag)}")
    newer = store.save("order:1", {**order, "qty": 2}, etag=item.etag)
    say(f"   save  order:1 qty=2 with that etag -> saved, {_etag(newer)}")
    try:
        store.save("order:1", {**order, "qty": 99}, etag=item.etag)
    except ETagMismatch:
        say("   save  order:1 qty=99 with the old etag -> refused: ETagMismatch "
            "(someone changed it since it was read)")
    else:
        raise TourFailed("a write with a stale etag was accepted")
    latest = store.get("order:1")
    say(f"   get   order:1 -> {_show(latest.value if latest else None)}")
    store.delete("order:1")


def _tour_pubsub(rt: Runtime) -> None:
    bus = rt.pubsub()
    topic = f"orders-{rt.app_id}"  # topics are not per app: keep runs on a kept database apart
    say(f"2. Pub/Sub  ({bus.component.type_name})")
    done = threading.Event()
    received: list[int] = []

    def on_order(message: Message) -> HandlerResult:
        number = message.data["id"]
        if number == 3 and message.attempt == 1:
            say(f"   billing got   {_show(message.data)} (attempt 1) -> asks for a retry")
            return HandlerResult.RETRY
        say(f"   billing got   {_show(message.data)} (attempt {message.attempt}) -> done")
        received.append(number)
        if len(received) == 3:
            done.set()
        return HandlerResult.SUCCESS

    subscription = bus.subscribe(topic, on_order, group="billing")
    say(f"   subscribe group 'billing' to topic '{topic}'")
    for number in (1, 2, 3):
        bus.publish(topic, {"id": number})
        say(f"   publish {_show({'id': number})} (a CloudEvent)")
    if not done.wait(WAIT):
        raise TourFailed(f"the subscriber received {received} of [1, 2, 3] within {WAIT:.0f} s")
    subscription.close()
    say("   each message was handled and acknowledged; the retried one came back as attempt 2")


def _tour_configuration(rt: Runtime) -> None:
    cfg = rt.configuration()
    say(f"3. Configuration  ({cfg.component.type_name})")
    cfg.save({"shop.discount": "10%"})
    say("   save      shop.discount = 10%")
    pushed: list[tuple[float, list[ConfigurationChange]]] = []
    arrived = threading.Event()

    def on_change(changes: list[ConfigurationChange]) -> None:
        pushed.append((time.monotonic(), changes))
        arrived.set()

    with cfg.subscribe(["shop.discount"], on_change):
        say("   subscribe to shop.discount")
        sent = time.monotonic()
        cfg.save({"shop.discount": "15%"})
        say("   save      shop.discount = 15%")
        if not arrived.wait(WAIT):
            raise TourFailed(f"no change was pushed within {WAIT:.0f} s")
        at, changes = pushed[0]
        for change in changes:
            say(f"   pushed -> {change.item.key} is now {change.item.content} "
                f"({(at - sent) * 1000:.0f} ms after the save)")
    cfg.delete(["shop.discount"])


def _tour_lock(rt: Runtime) -> None:
    lock = rt.lock()
    say(f"4. Lock  ({lock.component.type_name})")
    resource = "invoice-42"
    taken = lock.try_lock(resource, "alice", expiry=10)
    say(f"   alice try_lock {resource} for 10 s -> {'taken' if taken else 'refused'}")
    refused = not lock.try_lock(resource, "bob", expiry=10)
    say(f"   bob   try_lock {resource} -> {'refused: alice holds it' if refused else 'taken'}")
    status = lock.unlock(resource, "bob")
    say(f"   bob   unlock   {resource} -> {status.name}")
    released = lock.unlock(resource, "alice")
    say(f"   alice unlock   {resource} -> {released.name}")
    after = lock.try_lock(resource, "bob", expiry=10)
    say(f"   bob   try_lock {resource} -> {'taken' if after else 'refused'}")
    lock.unlock(resource, "bob")
    if not (taken and refused and released.name == "SUCCESS" and after):
        raise TourFailed("the lock did not behave as a lock")


def tour(args: argparse.Namespace) -> int:
    started = time.monotonic()
    say("capa tour: the standard API, one building block at a time")
    # A fresh app id per run: state keys, locks and configuration are kept apart per app, so
    # runs on a kept database or a shared server never see each other's data.
    app_id = f"tour-{uuid.uuid4().hex[:6]}"
    try:
        with _tour_runtime(args.url, args.dir, app_id) as (rt, where):
            say(f"   running on {where}")
            say(f"   as app id {app_id!r}")
            say()
            for step in (_tour_state, _tour_pubsub, _tour_configuration, _tour_lock):
                step(rt)
                say()
    except (TourFailed, CapaError) as exc:
        say(f"tour failed: {type(exc).__name__}: {exc}")
        return 1
    say(f"Tour done in {time.monotonic() - started:.1f} s. To run the same calls on other "
        "middleware, name it in capa.toml (see README.md).")
    return 0


def _add_tour(commands: Any) -> None:
    parser = commands.add_parser(
        "tour", help="run a short example of state, pub/sub, configuration and lock",
        description="A runnable example of the standard API, printed as it happens. By default "
        "it runs on the embedded default, a SQLite file in a temporary directory.",
    )
    parser.add_argument(
        "--url", help="run every building block on this component URL instead, e.g. memory://",
    )
    parser.add_argument(
        "--dir", help="keep the SQLite file in this directory instead of a temporary one",
    )
    parser.set_defaults(run=tour)


# --- the command line -----------------------------------------------------------------------

SUBCOMMANDS: list[Callable[[Any], None]] = [_add_tour]
# Layers above capa_core (capa_compat's migrate and demo) add their subcommands through this
# entry-point group: each entry is a function that registers its parser on the subparsers.
COMMANDS_GROUP = "capa.commands"


def build_parser() -> argparse.ArgumentParser:
    try:
        release = version("capa-python")
    except PackageNotFoundError:  # running from a source tree that was never installed
        release = "unknown"
    parser = argparse.ArgumentParser(
        prog="capa", description="Capa for Python: standard distributed-capability APIs. "
        "With no command, runs the tour.",
    )
    parser.add_argument("--version", action="version", version=f"capa-python {release}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(commands)
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["tour"])
    run: Command = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
