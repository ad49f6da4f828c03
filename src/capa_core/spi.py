"""The component SPI: one small abstract base per building block; derived behaviour lives here once.

A backend writes the few primitives marked abstract, on finished keys and bytes. Everything the
clients add (serialization, key prefixes, TTL checks, leases, dead-lettering, retries) happens
above this line, once for every component.
"""

from __future__ import annotations

import abc
import math
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from .errors import CapaError, SettingsError, UnsupportedFeature
from .types import (
    ConfigurationChange,
    ConfigurationItem,
    DeleteRequest,
    Delivery,
    Feature,
    SetRequest,
    StoredValue,
    UnlockStatus,
)

T = TypeVar("T")

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def duration(raw: Any) -> float:
    """Seconds from a number or a duration as Dapr writes them ("500ms", "5s", "1m", "2h").

    A cast for Component.option: ``self.option("ackWait", duration, 30.0)``.
    """
    if isinstance(raw, bool):
        raise ValueError(raw)
    if isinstance(raw, int | float):
        seconds = float(raw)
    else:
        match = _DURATION.fullmatch(str(raw))
        if match is None:
            raise ValueError(raw)
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(raw)
    return seconds


duration.__name__ = "duration (seconds, or like '500ms', '5s', '1m')"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Component(abc.ABC):
    """A named, configured instance of one backend for one building block."""

    block: ClassVar[str]
    kind: ClassVar[str]  # "memory", "sqlite", "redis"...: with ``block`` it makes the type name
    features: ClassVar[frozenset[Feature]] = frozenset()
    # Driver exceptions that mean "the middleware is unreachable right now": retried, then
    # raised as ComponentUnavailable by the dispatch point.
    transient_errors: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        self.name = name
        self.metadata = dict(metadata)
        self.source = source or f"component {self.type_name} {name!r}"

    @property
    def type_name(self) -> str:
        return f"{self.block}.{self.kind}"

    def require(self, feature: Feature, hint: str = "") -> None:
        if feature not in self.features:
            raise UnsupportedFeature(f"{self.name} ({self.type_name})", feature.value, hint)

    def setting(self, *names: str) -> tuple[str, Any] | None:
        """The first of ``names`` set in the metadata, and its value.

        Names match regardless of case, as in Dapr (and an environment variable's key,
        CAPA_PUBSUB__EVENTS__PUBLISHERCONFIRM, arrives lower-cased); an exact match wins.
        """
        for name in names:
            if name in self.metadata:
                return name, self.metadata[name]
        folded = {k.lower(): k for k in self.metadata if isinstance(k, str)}
        for name in names:
            if (found := folded.get(name.lower())) is not None:
                return found, self.metadata[found]
        return None

    def option(self, key: str, cast: Callable[[Any], T], default: T, *aliases: str) -> T:
        """A metadata value converted by ``cast``; a bad one fails naming the setting."""
        found = self.setting(key, *aliases)
        if found is None:
            return default
        raw = found[1]
        try:
            if cast is bool and isinstance(raw, str):
                lowered = raw.strip().lower()
                if lowered not in _TRUE | _FALSE:
                    raise ValueError(raw)
                return lowered in _TRUE  # type: ignore[return-value]
            return cast(raw)
        except (TypeError, ValueError):
            kind = getattr(cast, "__name__", str(cast))
            raise SettingsError(
                self.source, key, f"{raw!r} is not a valid {kind}", f"set {key} to a {kind}"
            ) from None

    def translate_error(self, exc: Exception) -> CapaError | None:
        """Map a driver exception to a typed error; None keeps the original."""
        return None

    def ping(self) -> None:
        """Return when the middleware answers; raise a transient error when it does not.

        In-process components have nothing to ask: the default returns at once.
        """

    def close(self) -> None:
        """Release connections and threads. Called once by the Runtime."""


# --- state -------------------------------------------------------------------------------------


class StateComponent(Component):
    """Key/value state on bytes. Primitives: get, set, delete; bulk and transactions derive."""

    block = "state"

    @abc.abstractmethod
    def get(self, key: str) -> StoredValue | None:
        """The live value of ``key``, or None when absent or expired."""

    @abc.abstractmethod
    def set(self, request: SetRequest) -> str:
        """Write and return the new ETag; raise ETagMismatch when a condition fails."""

    @abc.abstractmethod
    def delete(self, request: DeleteRequest) -> None:
        """Remove a key; absent is fine unless an ETag was given (then ETagMismatch)."""

    def bulk_get(self, keys: Sequence[str]) -> list[StoredValue | None]:
        return [self.get(key) for key in keys]

    def bulk_set(self, requests: Sequence[SetRequest]) -> dict[str, Exception]:
        """Write each entry independently; return the failures by key."""
        failures: dict[str, Exception] = {}
        for request in requests:
            try:
                self.set(request)
            except CapaError as exc:
                failures[request.key] = exc
        return failures

    def bulk_delete(self, requests: Sequence[DeleteRequest]) -> dict[str, Exception]:
        failures: dict[str, Exception] = {}
        for request in requests:
            try:
                self.delete(request)
            except CapaError as exc:
                failures[request.key] = exc
        return failures

    def transact(self, operations: Sequence[SetRequest | DeleteRequest]) -> None:
        """Apply all operations or none. Components declaring TRANSACTIONAL override this."""
        self.require(Feature.TRANSACTIONAL)

    def keys(self, prefix: str) -> list[str]:
        """Live keys starting with ``prefix``. Components declaring KEYS override this."""
        self.require(Feature.KEYS)
        return []

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key starting with ``prefix``; return how many were removed."""
        self.require(Feature.KEYS)
        keys = self.keys(prefix)
        self.bulk_delete([DeleteRequest(key, None, False) for key in keys])
        return len(keys)


# --- pub/sub -----------------------------------------------------------------------------------


class PubSubComponent(Component):
    """Topics with consumer groups and leased, acknowledged deliveries.

    Every group of a topic sees every message (fan-out); consumers pulling in one group compete.
    A delivery is leased: unacknowledged when its lease runs out, it goes to the next puller
    with ``attempt`` one higher.
    """

    block = "pubsub"

    @abc.abstractmethod
    def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        """Return only when the backend holds the message durably (where it can)."""

    @abc.abstractmethod
    def ensure_group(self, topic: str, group: str) -> None:
        """Declare a durable group: from now on it receives the topic's messages."""

    @abc.abstractmethod
    def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        """Up to ``max_messages`` deliveries, waiting at most ``timeout`` s for the first."""

    @abc.abstractmethod
    def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        """Forget these deliveries: they are done."""

    @abc.abstractmethod
    def nack(self, topic: str, group: str, ids: Sequence[str], delay: float) -> None:
        """Hand these deliveries out again after ``delay`` seconds."""

    @abc.abstractmethod
    def extend(self, topic: str, group: str, ids: Sequence[str], lease: float) -> None:
        """Renew the lease of deliveries a live consumer is still working on."""

    def bulk_publish(
        self, topic: str, entries: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> dict[str, Exception]:
        """Publish each (entry_id, data, metadata); return the failures by entry id."""
        failed: dict[str, Exception] = {}
        for entry_id, data, metadata in entries:
            try:
                self.publish(topic, data, metadata)
            except Exception as exc:
                failed[entry_id] = self.translate_error(exc) or exc
        return failed

    def purge(self, topic: str, group: str) -> int:
        """Drop the messages waiting for ``group``; return how many. Optional primitive."""
        raise UnsupportedFeature(f"{self.name} ({self.type_name})", "purge")

    def backlog(self, topic: str, group: str) -> int:
        """How many messages wait for ``group`` never handed to a consumer: what purge() would
        drop now (kombu's qsize, AMQP's message count; RabbitMQ also counts messages handed
        back, which it requeues). Optional primitive."""
        raise UnsupportedFeature(f"{self.name} ({self.type_name})", "backlog")

    def delete_group(self, topic: str, group: str) -> None:
        """Remove ``group`` and what waits for it: it gets nothing more. Optional primitive."""
        raise UnsupportedFeature(f"{self.name} ({self.type_name})", "delete_group")


# --- configuration -----------------------------------------------------------------------------

ChangeCallback = Callable[[list[ConfigurationChange]], None]


class ConfigurationComponent(Component):
    """Configuration items by (app_id, group, label, key). Primitives: load, store, remove, watch.

    The base fans one backend watch out to any number of subscribers.
    """

    block = "configuration"

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        # Per app id: its listeners, and the stop function of the one backend watch serving them.
        self._listeners: dict[str, list[ChangeCallback]] = {}
        self._watches: dict[str, Callable[[], None]] = {}
        self._listeners_lock = threading.Lock()

    @abc.abstractmethod
    def load(
        self, app_id: str, group: str, label: str, keys: Sequence[str]
    ) -> list[ConfigurationItem]:
        """The items of this group and label; all of them when ``keys`` is empty."""

    def store(self, app_id: str, items: Sequence[ConfigurationItem]) -> None:
        self.require(Feature.WRITE)

    def remove(self, app_id: str, group: str, label: str, keys: Sequence[str]) -> None:
        self.require(Feature.WRITE)

    def watch(self, app_id: str, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback`` with every change of this app's items; return a stop function."""
        self.require(Feature.WATCH)
        raise AssertionError("unreachable")

    def add_listener(self, app_id: str, listener: ChangeCallback) -> Callable[[], None]:
        """Subscribe ``listener`` to an app's changes; one backend watch per app serves all."""
        with self._listeners_lock:
            if app_id not in self._watches:
                self._watches[app_id] = self.watch(
                    app_id, lambda changes: self._fan_out(app_id, changes)
                )
            self._listeners.setdefault(app_id, []).append(listener)

        def remove() -> None:
            with self._listeners_lock:
                listeners = self._listeners.get(app_id, [])
                if listener in listeners:
                    listeners.remove(listener)

        return remove

    def _fan_out(self, app_id: str, changes: list[ConfigurationChange]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners.get(app_id, ()))
        for listener in listeners:
            listener(changes)

    def close(self) -> None:
        with self._listeners_lock:
            watches, self._watches = self._watches, {}
        for stop in watches.values():
            stop()


# --- lock --------------------------------------------------------------------------------------


class LockComponent(Component):
    """Leased mutual exclusion by resource id; only the owner may extend or release."""

    block = "lock"

    @abc.abstractmethod
    def try_lock(self, resource_id: str, owner: str, expiry: float) -> bool:
        """Take the lock if free (or expired); True when taken."""

    @abc.abstractmethod
    def unlock(self, resource_id: str, owner: str) -> UnlockStatus: ...

    @abc.abstractmethod
    def extend(self, resource_id: str, owner: str, expiry: float) -> bool:
        """Push the expiry out when ``owner`` still holds the lock; False otherwise."""


# --- secrets -----------------------------------------------------------------------------------


class SecretsComponent(Component):
    """Read-only named secrets, each a mapping of strings."""

    block = "secrets"

    @abc.abstractmethod
    def get(self, name: str) -> dict[str, str]:
        """The secret ``name``; raise SecretNotFound when absent."""

    @abc.abstractmethod
    def names(self) -> list[str]: ...

    def bulk_get(self) -> dict[str, dict[str, str]]:
        return {name: self.get(name) for name in self.names()}
