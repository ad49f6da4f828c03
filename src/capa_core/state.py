"""The state API: a client bound to one state component, on application values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from .codec import Codec, convert
from .dispatch import Dispatcher
from .errors import BulkStateError, ETagMismatch
from .spi import StateComponent
from .types import (
    Concurrency,
    Delete,
    DeleteRequest,
    Feature,
    SetRequest,
    StateItem,
    StoredValue,
    Upsert,
)

T = TypeVar("T")

KEY_SEPARATOR = "||"  # Dapr's: "<app_id>||<key>"


_new_request = tuple.__new__

def key_prefix_for(app_id: str, setting: str | None) -> str:
    """The prefix a state component puts before keys: per app by default, or shared."""
    if setting is None or setting == "appid":
        return f"{app_id}{KEY_SEPARATOR}" if app_id else ""
    if setting == "none":
        return ""
    return f"{setting}{KEY_SEPARATOR}"


def check_ttl(ttl: Any) -> float | None:
    """Normalise a TTL: seconds > 0, or None / -1 for no expiry; anything else is an error."""
    if ttl is None:
        return None
    if (ttl.__class__ is int or ttl.__class__ is float) and 0 < ttl < math.inf:
        return float(ttl)  # the common case, with the fewest checks (a cache sets on every miss)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise ValueError(f"ttl must be a number of seconds, got {ttl!r}")
    if ttl == -1:
        return None
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be > 0 seconds (or -1 for none), got {ttl!r}")
    return float(ttl)


def check_concurrency(value: Concurrency | str | None, default: Concurrency) -> bool:
    """True when the write is first-write."""
    if value is None:
        return default is Concurrency.FIRST_WRITE
    try:
        return Concurrency(value) is Concurrency.FIRST_WRITE
    except ValueError:
        raise ValueError(
            f"concurrency must be 'first-write' or 'last-write', got {value!r}"
        ) from None


class StateStore:
    """Save, read and delete application values in one state component."""

    def __init__(
        self,
        component: StateComponent,
        dispatcher: Dispatcher,
        codec: Codec,
        *,
        key_prefix: str = "",
        concurrency: Concurrency = Concurrency.LAST_WRITE,
    ) -> None:
        self.component = component
        self.name = component.name
        self.codec = codec
        self.key_prefix = key_prefix
        self._call = dispatcher.call
        self._concurrency = concurrency
        self._first_write = concurrency is Concurrency.FIRST_WRITE
        self._has_etag = Feature.ETAG in component.features
        self._has_ttl = Feature.TTL in component.features

    def ping(self) -> None:
        """Return when the component's middleware answers; ComponentUnavailable when it does not."""
        self._call(self.component, "ping", self.component.ping)

    # Keys, TTLs and concurrency are checked here, once, before any component sees them.

    def _key(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"state keys are non-empty strings, got {key!r}")
        return self.key_prefix + key

    def _set_request(
        self,
        key: str,
        value: Any,
        etag: str | None,
        ttl: Any,
        concurrency: Concurrency | str | None,
    ) -> SetRequest:
        # The common write (no etag, ttl or concurrency given) skips every check but the key's.
        seconds = None if ttl is None else check_ttl(ttl)
        first_write = (
            self._first_write if concurrency is None
            else check_concurrency(concurrency, self._concurrency)
        )
        if not self._has_etag and (etag is not None or first_write):
            self.component.require(Feature.ETAG, "etags and first-write concurrency need ETags")
        if seconds is not None and not self._has_ttl:
            self.component.require(Feature.TTL)
        # tuple.__new__ skips NamedTuple's Python-level __new__: a tenth of a write's cost.
        return _new_request(
            SetRequest, (self._key(key), self.codec.encode(value), etag, first_write, seconds)
        )

    def _delete_request(
        self, key: str, etag: str | None, concurrency: Concurrency | str | None
    ) -> DeleteRequest:
        if etag is not None and not self._has_etag:
            self.component.require(Feature.ETAG)
        return DeleteRequest(
            self._key(key), etag, check_concurrency(concurrency, self._concurrency)
        )

    def _item(self, key: str, stored: StoredValue) -> StateItem:
        return StateItem(key, self.codec.decode(stored.value), stored.etag, stored.expires_at)

    # --- the API --------------------------------------------------------------------------------

    def get(self, key: str) -> StateItem | None:
        """The item under ``key`` with its ETag and expiry, or None."""
        stored = self._call(self.component, "get", self.component.get, self._key(key))
        return None if stored is None else self._item(key, stored)

    def get_value(self, key: str, default: Any = None, *, as_type: type[T] | None = None) -> Any:
        """Just the value under ``key`` (``default`` when absent), optionally as a model type."""
        item = self.get(key)
        return default if item is None else convert(item.value, as_type)

    def save(
        self,
        key: str,
        value: Any,
        *,
        etag: str | None = None,
        ttl: float | None = None,
        concurrency: Concurrency | str | None = None,
    ) -> str:
        """Write ``value``; return the new ETag. Raises ETagMismatch when ``etag`` is stale."""
        request = self._set_request(key, value, etag, ttl, concurrency)
        try:
            return self._call(self.component, "save", self.component.set, request)
        except ETagMismatch as exc:
            exc.key = key  # the caller's key, not the prefixed one
            raise

    def delete(
        self, key: str, *, etag: str | None = None, concurrency: Concurrency | str | None = None
    ) -> None:
        request = self._delete_request(key, etag, concurrency)
        try:
            self._call(self.component, "delete", self.component.delete, request)
        except ETagMismatch as exc:
            exc.key = key
            raise

    def bulk_get(self, keys: Sequence[str]) -> list[StateItem | None]:
        """Items in the order of ``keys``; None for each missing key."""
        finished = [self._key(k) for k in keys]
        stored = self._call(self.component, "bulk_get", self.component.bulk_get, finished)
        return [None if s is None else self._item(k, s) for k, s in zip(keys, stored, strict=True)]

    def bulk_save(self, items: Iterable[Upsert | StateItem]) -> None:
        """Write every entry; entries are independent. Raises BulkStateError naming failures."""
        requests = [
            self._set_request(
                i.key, i.value, i.etag, getattr(i, "ttl", None), getattr(i, "concurrency", None)
            )
            for i in items
        ]
        failures = self._call(self.component, "bulk_save", self.component.bulk_set, requests)
        self._raise_bulk(failures)

    def bulk_delete(self, keys: Iterable[str | Delete]) -> None:
        requests = [
            self._delete_request(k, None, None)
            if isinstance(k, str)
            else self._delete_request(k.key, k.etag, k.concurrency)
            for k in keys
        ]
        failures = self._call(
            self.component, "bulk_delete", self.component.bulk_delete, requests
        )
        self._raise_bulk(failures)

    def transaction(self, operations: Iterable[Upsert | Delete]) -> None:
        """Apply upserts and deletes atomically, in order (components declaring TRANSACTIONAL)."""
        self.component.require(Feature.TRANSACTIONAL)
        requests: list[SetRequest | DeleteRequest] = []
        for op in operations:
            if isinstance(op, Upsert):
                requests.append(
                    self._set_request(op.key, op.value, op.etag, op.ttl, op.concurrency)
                )
            elif isinstance(op, Delete):
                requests.append(self._delete_request(op.key, op.etag, op.concurrency))
            else:
                raise TypeError(f"transaction operations are Upsert or Delete, got {op!r}")
        self._call(self.component, "transaction", self.component.transact, requests)

    def keys(self, prefix: str = "") -> list[str]:
        """Keys of this app starting with ``prefix`` (components declaring KEYS)."""
        self.component.require(Feature.KEYS)
        full = self._call(self.component, "keys", self.component.keys, self.key_prefix + prefix)
        cut = len(self.key_prefix)
        return [k[cut:] for k in full]

    def delete_prefix(self, prefix: str = "") -> int:
        """Delete this app's keys starting with ``prefix``; return how many went."""
        self.component.require(Feature.KEYS)
        return self._call(
            self.component, "delete_prefix", self.component.delete_prefix, self.key_prefix + prefix
        )

    def _raise_bulk(self, failures: dict[str, Exception]) -> None:
        if failures:
            cut = len(self.key_prefix)
            raise BulkStateError({k[cut:]: e for k, e in failures.items()})
