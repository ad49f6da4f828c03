"""The asyncio twin of the API: same clients, same names, awaitable.

Component calls run in the default thread pool (``asyncio.to_thread``) so the event loop never
blocks on a backend; async subscription handlers run on the loop itself.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any

from .configuration import Configuration, ConfigurationSubscription
from .lock import Lock, default_owner
from .pubsub import DEFAULT_GROUP, Message, PubSub, settle
from .secrets import SecretStore
from .settings import DEFAULT_NAME
from .state import StateStore
from .types import (
    ConfigurationChange,
    ConfigurationItem,
    Delete,
    HandlerResult,
    StateItem,
    UnlockStatus,
    Upsert,
)

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("capa_core.aio")

AsyncHandler = Callable[[Message], Awaitable["HandlerResult | bool | None"]]
AsyncChangeHandler = Callable[[list[ConfigurationChange]], Awaitable[None] | None]
_run = asyncio.to_thread


class AsyncStateStore:
    def __init__(self, store: StateStore) -> None:
        self.sync = store

    async def ping(self) -> None:
        await _run(self.sync.ping)

    async def get(self, key: str) -> StateItem | None:
        return await _run(self.sync.get, key)

    async def get_value(self, key: str, default: Any = None, *, as_type: Any = None) -> Any:
        return await _run(self.sync.get_value, key, default, as_type=as_type)

    async def save(self, key: str, value: Any, **options: Any) -> str:
        return await _run(self.sync.save, key, value, **options)

    async def delete(self, key: str, **options: Any) -> None:
        await _run(self.sync.delete, key, **options)

    async def bulk_get(self, keys: Sequence[str]) -> list[StateItem | None]:
        return await _run(self.sync.bulk_get, keys)

    async def bulk_save(self, items: Iterable[Upsert | StateItem]) -> None:
        await _run(self.sync.bulk_save, list(items))

    async def bulk_delete(self, keys: Iterable[str | Delete]) -> None:
        await _run(self.sync.bulk_delete, list(keys))

    async def transaction(self, operations: Iterable[Upsert | Delete]) -> None:
        await _run(self.sync.transaction, list(operations))

    async def keys(self, prefix: str = "") -> list[str]:
        return await _run(self.sync.keys, prefix)

    async def delete_prefix(self, prefix: str = "") -> int:
        return await _run(self.sync.delete_prefix, prefix)


def _requeue(messages: list[Message]) -> None:
    for message in messages:
        message.nack(requeue=True, delay=0.0)


class AsyncSubscription:
    """An asyncio task pulling messages and awaiting the handler for each."""

    def __init__(self, pubsub: PubSub, topic: str, handler: AsyncHandler, **options: Any) -> None:
        self._pubsub, self.topic, self._handler = pubsub, topic, handler
        self._options = options
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            pulling = asyncio.ensure_future(
                _run(self._pubsub.pull, self.topic, timeout=0.5, **self._options)
            )
            try:
                messages = await asyncio.shield(pulling)
            except asyncio.CancelledError:
                # The pull goes on in its thread: give back what it leases to other consumers.
                with suppress(Exception):
                    await _run(_requeue, await pulling)
                raise
            except Exception:
                log.exception("pull from %s failed; retrying", self.topic)
                await asyncio.sleep(1.0)
                continue
            try:
                for message in messages:
                    await self._handle(message)
            except asyncio.CancelledError:
                await _run(_requeue, messages)  # settled messages are left as they are
                raise

    async def _handle(self, message: Message) -> None:
        try:
            result = await self._handler(message)
        except Exception:
            log.exception("handler of %s failed on message %s", self.topic, message.id)
            result = HandlerResult.RETRY
        try:
            await _run(settle, message, result)
        except Exception:  # unreachable middleware: the lease brings the message back
            log.exception("could not settle message %s of %s", message.id, self.topic)

    async def close(self) -> None:
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task


class AsyncPubSub:
    def __init__(self, pubsub: PubSub) -> None:
        self.sync = pubsub

    async def ping(self) -> None:
        await _run(self.sync.ping)

    async def publish(self, topic: str, data: Any, **options: Any) -> None:
        await _run(self.sync.publish, topic, data, **options)

    async def bulk_publish(
        self, topic: str, entries: Iterable[Any] | Mapping[str, Any], *, raw: bool = False
    ) -> None:
        entries = dict(entries) if isinstance(entries, Mapping) else list(entries)
        await _run(self.sync.bulk_publish, topic, entries, raw=raw)

    async def pull(self, topic: str, **options: Any) -> list[Message]:
        return await _run(self.sync.pull, topic, **options)

    async def subscribe(
        self,
        topic: str,
        handler: AsyncHandler,
        *,
        group: str = DEFAULT_GROUP,
        dead_letter_topic: str | None = None,
        max_attempts: int | None = None,
        batch: int = 10,
    ) -> AsyncSubscription:
        """Await ``handler`` for each message of ``topic`` in ``group`` until closed."""
        await _run(self.sync.ensure_group, topic, group)
        return AsyncSubscription(
            self.sync, topic, handler, group=group, dead_letter_topic=dead_letter_topic,
            max_attempts=max_attempts, max_messages=batch,
        )


class AsyncConfiguration:
    def __init__(self, configuration: Configuration) -> None:
        self.sync = configuration

    async def ping(self) -> None:
        await _run(self.sync.ping)

    async def get(
        self, keys: Sequence[str] = (), *, group: str = "", label: str = ""
    ) -> list[ConfigurationItem]:
        return await _run(self.sync.get, keys, group=group, label=label)

    async def save(
        self, items: Iterable[ConfigurationItem] | Mapping[str, str], **coords: str
    ) -> None:
        items = dict(items) if isinstance(items, Mapping) else list(items)
        await _run(self.sync.save, items, **coords)

    async def delete(self, keys: Sequence[str], **coords: str) -> None:
        await _run(self.sync.delete, keys, **coords)

    async def subscribe(
        self, keys: Sequence[str], handler: AsyncChangeHandler, **coords: str | None
    ) -> ConfigurationSubscription:
        """Changes are pushed to ``handler`` (a function or a coroutine function) on the loop."""
        loop = asyncio.get_running_loop()
        running: set[asyncio.Future[Any]] = set()  # keeps handler tasks alive until done

        def deliver(changes: list[ConfigurationChange]) -> None:
            result = handler(changes)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                running.add(task)
                task.add_done_callback(running.discard)

        def on_loop(changes: list[ConfigurationChange]) -> None:
            loop.call_soon_threadsafe(deliver, changes)

        return await _run(self.sync.subscribe, keys, on_loop, **coords)


class AsyncLock:
    def __init__(self, lock: Lock) -> None:
        self.sync = lock

    async def ping(self) -> None:
        await _run(self.sync.ping)

    async def try_lock(self, resource_id: str, owner: str, expiry: float) -> bool:
        return await _run(self.sync.try_lock, resource_id, owner, expiry)

    async def unlock(self, resource_id: str, owner: str) -> UnlockStatus:
        return await _run(self.sync.unlock, resource_id, owner)

    async def extend(self, resource_id: str, owner: str, expiry: float) -> None:
        await _run(self.sync.extend, resource_id, owner, expiry)

    @asynccontextmanager
    async def hold(
        self, resource_id: str, *, expiry: float = 10.0, wait: float | None = None,
        owner: str | None = None,
    ) -> AsyncIterator[str]:
        """Hold ``resource_id`` for the ``async with`` block, extending it while held."""
        owner = owner or default_owner()
        manager = self.sync.hold(resource_id, expiry=expiry, wait=wait, owner=owner)
        held = await _run(manager.__enter__)
        try:
            yield held
        finally:
            await _run(manager.__exit__, None, None, None)


class AsyncSecretStore:
    def __init__(self, store: SecretStore) -> None:
        self.sync = store

    async def ping(self) -> None:
        await _run(self.sync.ping)

    async def get(self, name: str) -> dict[str, str]:
        return await _run(self.sync.get, name)

    async def bulk_get(self) -> dict[str, dict[str, str]]:
        return await _run(self.sync.bulk_get)


class AsyncRuntime:
    """``runtime.aio``: the same components as the Runtime, with awaitable clients."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def state(self, name: str = DEFAULT_NAME) -> AsyncStateStore:
        return AsyncStateStore(self.runtime.state(name))

    def pubsub(self, name: str = DEFAULT_NAME) -> AsyncPubSub:
        return AsyncPubSub(self.runtime.pubsub(name))

    def configuration(self, name: str = DEFAULT_NAME) -> AsyncConfiguration:
        return AsyncConfiguration(self.runtime.configuration(name))

    def lock(self, name: str = DEFAULT_NAME) -> AsyncLock:
        return AsyncLock(self.runtime.lock(name))

    def secrets(self, name: str = DEFAULT_NAME) -> AsyncSecretStore:
        return AsyncSecretStore(self.runtime.secrets(name))
