"""In-process components for tests and the reference semantics of every building block.

URL form ``memory://`` (a private store) or ``memory://NAME`` (components of one process with the
same NAME share data). Supports state (ETags, TTL, transactions, key listing), pub/sub (groups,
leases, nack with delay), configuration (write and watch) and lock. Nothing survives the process.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import ETagMismatch
from ..spi import (
    ChangeCallback,
    ConfigurationComponent,
    LockComponent,
    PubSubComponent,
    StateComponent,
)
from ..types import (
    ConfigurationChange,
    ConfigurationItem,
    DeleteRequest,
    Delivery,
    Feature,
    SetRequest,
    StoredValue,
    UnlockStatus,
)

_namespaces: dict[tuple[str, str], Any] = {}
_namespaces_lock = threading.Lock()


def _shared(block: str, metadata: Mapping[str, Any], factory: Callable[[], Any]) -> Any:
    """The backing data of a named in-memory namespace, or a fresh private one.

    The name comes from ``namespace`` or from the URL's host part (``memory://NAME``).
    """
    namespace = metadata.get("namespace") or urlsplit(str(metadata.get("url", ""))).netloc
    if not namespace:
        return factory()
    with _namespaces_lock:
        return _namespaces.setdefault((block, str(namespace)), factory())


_etag_prefix = os.urandom(4).hex()
_etag_serial = itertools.count(1)


_new_stored = tuple.__new__


def new_etag() -> str:
    # Unique in the process, which is all a memory store spans; cheaper than random bytes.
    return f"{_etag_prefix}{next(_etag_serial):x}"


# --- state -------------------------------------------------------------------------------------


@dataclass
class _StateData:
    items: dict[str, StoredValue] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)


class MemoryState(StateComponent):
    kind = "memory"
    features = frozenset({Feature.ETAG, Feature.TTL, Feature.TRANSACTIONAL, Feature.KEYS})

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._data: _StateData = _shared("state", metadata, _StateData)

    def _live(self, key: str, now: float) -> StoredValue | None:
        stored = self._data.items.get(key)
        if stored is not None and stored.expires_at is not None and stored.expires_at <= now:
            del self._data.items[key]
            return None
        return stored

    def get(self, key: str) -> StoredValue | None:
        stored = self._data.items.get(key)
        if stored is None or stored.expires_at is None or stored.expires_at > time.time():
            return stored
        with self._data.lock:
            return self._live(key, time.time())

    def _check(self, key: str, etag: str | None, first_write: bool, now: float) -> None:
        current = self._live(key, now)
        if etag is not None:
            if current is None or current.etag != etag:
                raise ETagMismatch(key)
        elif first_write and current is not None:
            raise ETagMismatch(key, "first-write: the key exists and no etag was given")

    def set(self, request: SetRequest) -> str:
        key, value, etag, first_write, ttl = request
        etag_out = new_etag()
        with self._data.lock:
            if etag is not None or first_write:
                now = time.time()
                self._check(key, etag, first_write, now)
                expires_at = None if ttl is None else now + ttl
            else:
                expires_at = None if ttl is None else time.time() + ttl
            # tuple.__new__: NamedTuple's own __new__ is a Python call on every write.
            self._data.items[key] = _new_stored(StoredValue, (value, etag_out, expires_at))
        return etag_out

    def delete(self, request: DeleteRequest) -> None:
        with self._data.lock:
            if request.etag is not None:
                self._check(request.key, request.etag, False, time.time())
            self._data.items.pop(request.key, None)

    def transact(self, operations: Sequence[SetRequest | DeleteRequest]) -> None:
        with self._data.lock:
            now = time.time()
            staged = dict(self._data.items)
            for op in operations:
                # Check against the staged view so a later op sees an earlier op's effect.
                current = staged.get(op.key)
                expires_at = current.expires_at if current is not None else None
                if expires_at is not None and expires_at <= now:
                    current = None
                if op.etag is not None and (current is None or current.etag != op.etag):
                    raise ETagMismatch(op.key)
                if isinstance(op, SetRequest):
                    if op.etag is None and op.first_write and current is not None:
                        raise ETagMismatch(op.key, "first-write: the key exists")
                    expires = None if op.ttl is None else now + op.ttl
                    staged[op.key] = StoredValue(op.value, new_etag(), expires)
                else:
                    staged.pop(op.key, None)
            self._data.items = staged

    def keys(self, prefix: str) -> list[str]:
        with self._data.lock:
            now = time.time()
            matching = [k for k in self._data.items if k.startswith(prefix)]
            return [k for k in matching if self._live(k, now) is not None]

    def delete_prefix(self, prefix: str) -> int:
        with self._data.lock:
            doomed = [k for k in self._data.items if k.startswith(prefix)]
            for key in doomed:
                del self._data.items[key]
            return len(doomed)


# --- pub/sub -----------------------------------------------------------------------------------


@dataclass
class _Pending:
    message: tuple[bytes, Mapping[str, str]]
    attempt: int
    visible_at: float  # lease end, or when a nacked message may be handed out again


@dataclass
class _Group:
    ready: deque[tuple[bytes, Mapping[str, str]]] = field(default_factory=deque)
    pending: dict[str, _Pending] = field(default_factory=dict)


@dataclass
class _Topic:
    groups: dict[str, _Group] = field(default_factory=dict)
    # Messages published while no group exists wait here for the first group.
    backlog: deque[tuple[bytes, Mapping[str, str]]] = field(default_factory=deque)


@dataclass
class _Bus:
    topics: dict[str, _Topic] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    ids: itertools.count[int] = field(default_factory=itertools.count)


class MemoryPubSub(PubSubComponent):
    kind = "memory"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._bus: _Bus = _shared("pubsub", metadata, _Bus)

    def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        message = (data, dict(metadata))
        with self._bus.changed:
            entry = self._topic(topic)
            if entry.groups:
                for group in entry.groups.values():
                    group.ready.append(message)
            else:
                entry.backlog.append(message)
            self._bus.changed.notify_all()

    def _topic(self, topic: str) -> _Topic:
        entry = self._bus.topics.get(topic)
        if entry is None:
            entry = self._bus.topics[topic] = _Topic()
        return entry

    def _ensure(self, topic: str, group: str) -> _Group:
        """The group, declared if new. Called with the bus condition held."""
        entry = self._topic(topic)
        state = entry.groups.get(group)
        if state is None:
            state = entry.groups[group] = _Group(
                ready=entry.backlog if not entry.groups else deque()
            )
            entry.backlog = deque()
        return state

    def ensure_group(self, topic: str, group: str) -> None:
        with self._bus.changed:
            self._ensure(topic, group)

    def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self._bus.changed:
            state = self._ensure(topic, group)
            while True:
                out = self._take(state, max_messages, lease)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    return out
                # Wake for new messages, or when the earliest lease or delay runs out.
                now = time.time()
                due = min((p.visible_at - now for p in state.pending.values()), default=remaining)
                self._bus.changed.wait(max(0.001, min(remaining, due)))

    def _take(self, state: _Group, max_messages: int, lease: float) -> list[Delivery]:
        now = time.time()
        out: list[Delivery] = []
        for delivery_id, pending in state.pending.items():
            if len(out) == max_messages:
                return out
            if pending.visible_at <= now:
                pending.attempt += 1
                pending.visible_at = now + lease
                out.append(Delivery(delivery_id, *pending.message[:1], pending.attempt,
                                    pending.message[1]))
        while state.ready and len(out) < max_messages:
            message = state.ready.popleft()
            delivery_id = str(next(self._bus.ids))
            state.pending[delivery_id] = _Pending(message, 1, now + lease)
            out.append(Delivery(delivery_id, message[0], 1, message[1]))
        return out

    def _pending(self, topic: str, group: str) -> dict[str, _Pending]:
        """The deliveries in hand of a group; none when the group is gone (deleted)."""
        state = self._bus.topics.get(topic)
        found = None if state is None else state.groups.get(group)
        return {} if found is None else found.pending

    def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        with self._bus.changed:
            pending = self._pending(topic, group)
            for delivery_id in ids:
                pending.pop(delivery_id, None)

    def nack(self, topic: str, group: str, ids: Sequence[str], delay: float) -> None:
        with self._bus.changed:
            pending = self._pending(topic, group)
            for delivery_id in ids:
                if delivery_id in pending:
                    pending[delivery_id].visible_at = time.time() + delay
            self._bus.changed.notify_all()

    def extend(self, topic: str, group: str, ids: Sequence[str], lease: float) -> None:
        with self._bus.changed:
            pending = self._pending(topic, group)
            for delivery_id in ids:
                if delivery_id in pending:
                    pending[delivery_id].visible_at = time.time() + lease

    def delete_group(self, topic: str, group: str) -> None:
        with self._bus.changed:
            state = self._bus.topics.get(topic)
            if state is not None:
                state.groups.pop(group, None)

    def purge(self, topic: str, group: str) -> int:
        with self._bus.changed:
            state = self._bus.topics.get(topic, _Topic()).groups.get(group)
            if state is None:
                return 0
            count = len(state.ready)
            state.ready.clear()
            return count

    def backlog(self, topic: str, group: str) -> int:
        with self._bus.changed:
            state = self._bus.topics.get(topic, _Topic()).groups.get(group)
            return 0 if state is None else len(state.ready)


# --- configuration -----------------------------------------------------------------------------


@dataclass
class _ConfigData:
    items: dict[tuple[str, str, str, str], ConfigurationItem] = field(default_factory=dict)
    watchers: list[tuple[str, ChangeCallback]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MemoryConfiguration(ConfigurationComponent):
    kind = "memory"
    features = frozenset({Feature.WRITE, Feature.WATCH})

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self._data: _ConfigData = _shared("configuration", metadata, _ConfigData)

    def load(
        self, app_id: str, group: str, label: str, keys: Sequence[str]
    ) -> list[ConfigurationItem]:
        with self._data.lock:
            if keys:
                found = (self._data.items.get((app_id, group, label, k)) for k in keys)
                return [item for item in found if item is not None]
            return [
                item for (a, g, lb, _), item in self._data.items.items()
                if (a, g, lb) == (app_id, group, label)
            ]

    def store(self, app_id: str, items: Sequence[ConfigurationItem]) -> None:
        with self._data.lock:
            for item in items:
                self._data.items[(app_id, item.group, item.label, item.key)] = item
        self._notify(app_id, [ConfigurationChange(item) for item in items])

    def remove(self, app_id: str, group: str, label: str, keys: Sequence[str]) -> None:
        with self._data.lock:
            gone = [self._data.items.pop((app_id, group, label, k), None) for k in keys]
        self._notify(app_id, [ConfigurationChange(item, True) for item in gone if item])

    def _notify(self, app_id: str, changes: list[ConfigurationChange]) -> None:
        with self._data.lock:
            watchers = [cb for a, cb in self._data.watchers if a == app_id]
        if changes:
            for callback in watchers:
                callback(changes)

    def watch(self, app_id: str, callback: ChangeCallback) -> Callable[[], None]:
        entry = (app_id, callback)
        with self._data.lock:
            self._data.watchers.append(entry)

        def stop() -> None:
            with self._data.lock:
                if entry in self._data.watchers:
                    self._data.watchers.remove(entry)

        return stop


# --- lock --------------------------------------------------------------------------------------


@dataclass
class _LockData:
    held: dict[str, tuple[str, float]] = field(default_factory=dict)  # resource: (owner, until)
    mutex: threading.Lock = field(default_factory=threading.Lock)


class MemoryLock(LockComponent):
    kind = "memory"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        data: _LockData = _shared("lock", metadata, _LockData)
        self._held, self._mutex = data.held, data.mutex

    def _holder(self, resource_id: str) -> str | None:
        held = self._held.get(resource_id)
        if held is None or held[1] <= time.monotonic():
            return None
        return held[0]

    def try_lock(self, resource_id: str, owner: str, expiry: float) -> bool:
        with self._mutex:
            if self._holder(resource_id) is not None:
                return False
            self._held[resource_id] = (owner, time.monotonic() + expiry)
            return True

    def unlock(self, resource_id: str, owner: str) -> UnlockStatus:
        with self._mutex:
            holder = self._holder(resource_id)
            if holder is None:
                return UnlockStatus.LOCK_DOES_NOT_EXIST
            if holder != owner:
                return UnlockStatus.LOCK_BELONGS_TO_OTHERS
            del self._held[resource_id]
            return UnlockStatus.SUCCESS

    def extend(self, resource_id: str, owner: str, expiry: float) -> bool:
        with self._mutex:
            if self._holder(resource_id) != owner:
                return False
            self._held[resource_id] = (owner, time.monotonic() + expiry)
            return True
