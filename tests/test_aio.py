"""The asyncio twins: same clients, same names, awaitable; async handlers run on the loop."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from capa_core import (
    ConfigurationChange,
    ConfigurationItem,
    Delete,
    ETagMismatch,
    HandlerResult,
    LockNotAcquired,
    LockNotOwned,
    Message,
    Runtime,
    UnlockStatus,
    Upsert,
)


@pytest.fixture
def rt(unique: str) -> Any:
    runtime = Runtime.from_mapping(
        {"capa": {"app_id": f"aio-{unique}", "default_url": f"memory://{unique}"},
         "pubsub": {"default": {"url": f"memory://{unique}", "lease": 1}}}
    )
    yield runtime
    runtime.close()


async def eventually(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {condition}"
        await asyncio.sleep(0.01)


def test_every_async_client_pings(rt: Runtime) -> None:
    async def main() -> None:
        aio = rt.aio
        for client in (aio.state(), aio.pubsub(), aio.configuration(), aio.lock(), aio.secrets()):
            assert await client.ping() is None

    asyncio.run(main())


# --- state ---------------------------------------------------------------------------------------


def test_state(rt: Runtime) -> None:
    async def main() -> None:
        store = rt.aio.state()
        etag = await store.save("k", {"v": 1})
        item = await store.get("k")
        assert item is not None and item.value == {"v": 1} and item.etag == etag
        with pytest.raises(ETagMismatch):
            await store.save("k", 2, etag="stale")
        await store.save("k", 2, etag=etag, ttl=60)
        assert await store.get_value("k") == 2
        assert await store.get_value("missing", "default") == "default"
        await store.bulk_save([Upsert("a", 1), Upsert("b", 2)])
        assert [i.value if i else None for i in await store.bulk_get(["a", "x", "b"])] == [
            1, None, 2,
        ]
        await store.transaction([Delete("a"), Upsert("c", 3)])
        assert sorted(await store.keys()) == ["b", "c", "k"]
        await store.bulk_delete(["b", Delete("c")])
        await store.delete("k")
        assert await store.keys() == []
        await store.save("p:1", 1)
        assert await store.delete_prefix("p:") == 1

    asyncio.run(main())


def test_state_calls_do_not_block_the_loop(rt: Runtime) -> None:
    async def main() -> None:
        store = rt.aio.state()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.gather(*(store.save(f"k{n}", n) for n in range(50)))
        task.cancel()
        assert ticks > 1
        assert sorted(await store.keys()) == sorted(f"k{n}" for n in range(50))

    asyncio.run(main())


# --- pub/sub -------------------------------------------------------------------------------------


def test_pubsub_subscribe_with_an_async_handler(rt: Runtime, unique: str) -> None:
    topic = f"t-{unique}"

    async def main() -> None:
        bus = rt.aio.pubsub()
        loop = asyncio.get_running_loop()
        seen: list[Any] = []
        threads: set[int] = set()

        async def handler(message: Message) -> HandlerResult:
            assert asyncio.get_running_loop() is loop
            threads.add(threading.get_ident())
            await asyncio.sleep(0.001)
            if message.data == "fail-once" and message.attempt == 1:
                raise RuntimeError("retry me")
            seen.append(message.data)
            return HandlerResult.SUCCESS

        subscription = await bus.subscribe(topic, handler, group="g")
        await bus.publish(topic, "one")
        await bus.bulk_publish(topic, ["two", "fail-once"])
        await bus.bulk_publish(topic, {"x": "three"})
        await eventually(lambda: len(seen) == 4)
        assert sorted(seen) == ["fail-once", "one", "three", "two"]
        assert threads == {threading.get_ident()}  # every handler ran on the loop's thread
        await subscription.close()

    asyncio.run(main())


def test_pubsub_async_handler_results(rt: Runtime, unique: str) -> None:
    topic = f"t-{unique}"

    async def main() -> None:
        bus = rt.aio.pubsub()
        attempts: list[tuple[Any, int]] = []
        dead: list[Any] = []

        async def handler(message: Message) -> Any:
            attempts.append((message.data, message.attempt))
            if message.data == "drop":
                return HandlerResult.DROP
            return message.attempt > 1 or HandlerResult.RETRY

        async def on_dead(message: Message) -> None:
            dead.append(message.data)

        dead_sub = await bus.subscribe(f"{topic}-dead", on_dead, group="g")
        sub = await bus.subscribe(topic, handler, group="g", dead_letter_topic=f"{topic}-dead")
        await bus.publish(topic, "retry")
        await bus.publish(topic, "drop")
        await eventually(lambda: dead == ["drop"] and ("retry", 2) in attempts)
        await sub.close()
        await dead_sub.close()

    asyncio.run(main())


def test_pubsub_pull_and_ack(rt: Runtime, unique: str) -> None:
    topic = f"t-{unique}"

    async def main() -> None:
        bus = rt.aio.pubsub()
        assert await bus.pull(topic, group="g", timeout=0.05) == []
        await bus.publish(topic, {"n": 1})
        [message] = await bus.pull(topic, group="g", timeout=2)
        assert message.data == {"n": 1}
        message.ack()
        assert await bus.pull(topic, group="g", timeout=0.1) == []

    asyncio.run(main())


def test_closing_an_async_subscription_leaves_messages_for_others(
    rt: Runtime, unique: str
) -> None:
    topic = f"t-{unique}"
    handled: list[Any] = []

    async def main() -> None:
        bus = rt.aio.pubsub()
        started = asyncio.Event()

        async def slow(message: Message) -> None:
            started.set()
            await asyncio.sleep(30)

        subscription = await bus.subscribe(topic, slow, group="g", batch=10)
        await bus.bulk_publish(topic, ["a", "b", "c"])
        await asyncio.wait_for(started.wait(), 5)
        await subscription.close()  # mid-batch: none of the three was handled
        await bus.publish(topic, "d")  # may land in a pull still running in its thread

    asyncio.run(main())
    sync_bus = rt.pubsub()
    deadline = time.monotonic() + 5
    while len(handled) < 4 and time.monotonic() < deadline:
        for message in sync_bus.pull(topic, group="g", timeout=0.5):
            handled.append(message.data)
            message.ack()
    assert sorted(handled) == ["a", "b", "c", "d"]


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["sync-handler", "async-handler"])
def test_configuration_subscribe_runs_the_handler_on_the_loop(rt: Runtime, style: str) -> None:
    async def main() -> None:
        config = rt.aio.configuration()
        loop = asyncio.get_running_loop()
        changes: list[ConfigurationChange] = []
        threads: set[int] = set()

        def on_change(batch: list[ConfigurationChange]) -> None:
            assert asyncio.get_running_loop() is loop
            threads.add(threading.get_ident())
            changes.extend(batch)

        async def on_change_async(batch: list[ConfigurationChange]) -> None:
            await asyncio.sleep(0)
            on_change(batch)

        handler = on_change if style == "sync-handler" else on_change_async
        subscription = await config.subscribe(["db.pool"], handler)
        await config.save({"db.pool": "10", "other": "x"})
        await config.save([ConfigurationItem("db.pool", "20")])
        await config.delete(["db.pool"])
        await eventually(lambda: len(changes) == 3)
        assert [(c.item.content, c.deleted) for c in changes] == [
            ("10", False), ("20", False), ("20", True),
        ]
        assert threads == {threading.get_ident()}
        subscription.close()
        await config.save({"db.pool": "30"})
        await asyncio.sleep(0.1)
        assert len(changes) == 3
        assert await config.get(["db.pool", "other"]) == [
            ConfigurationItem("db.pool", "30"), ConfigurationItem("other", "x"),
        ]

    asyncio.run(main())


# --- lock ----------------------------------------------------------------------------------------


def test_lock(rt: Runtime) -> None:
    async def main() -> None:
        lock = rt.aio.lock()
        assert await lock.try_lock("r", "me", 5)
        assert not await lock.try_lock("r", "you", 5)
        with pytest.raises(LockNotOwned):
            await lock.extend("r", "you", 5)
        await lock.extend("r", "me", 5)
        assert await lock.unlock("r", "you") is UnlockStatus.LOCK_BELONGS_TO_OTHERS
        assert await lock.unlock("r", "me") is UnlockStatus.SUCCESS

    asyncio.run(main())


def test_lock_hold(rt: Runtime) -> None:
    async def main() -> None:
        lock = rt.aio.lock()
        async with lock.hold("r", expiry=1, wait=1) as owner:
            assert not await lock.try_lock("r", "other", 5)
            await asyncio.sleep(1.3)  # past the expiry: kept alive meanwhile
            assert not await lock.try_lock("r", "other", 5)
            with pytest.raises(LockNotAcquired):
                async with lock.hold("r", wait=0.2):
                    pytest.fail("taken twice")
        assert owner
        assert await lock.try_lock("r", "other", 5)

    asyncio.run(main())


def test_lock_hold_does_not_block_the_loop_while_waiting(rt: Runtime) -> None:
    async def main() -> None:
        lock = rt.aio.lock()
        assert await lock.try_lock("r", "first", 5)

        async def release_soon() -> None:
            await asyncio.sleep(0.2)
            assert await lock.unlock("r", "first") is UnlockStatus.SUCCESS

        releaser = asyncio.create_task(release_soon())
        async with lock.hold("r", expiry=5, wait=3) as owner:
            assert owner != "first"
        await releaser

    asyncio.run(main())


# --- secrets -------------------------------------------------------------------------------------


def test_secrets(rt: Runtime, monkeypatch: pytest.MonkeyPatch, unique: str) -> None:
    monkeypatch.setenv(f"AIO_{unique}", "value")

    async def main() -> None:
        secrets = rt.aio.secrets()
        assert await secrets.get(f"AIO_{unique}") == {f"AIO_{unique}": "value"}
        assert (await secrets.bulk_get())[f"AIO_{unique}"] == {f"AIO_{unique}": "value"}

    asyncio.run(main())
