"""The values that cross the standard API: items, operations, statuses and features."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple


class Feature(enum.Enum):
    """A capability a component declares; asking for an undeclared one raises UnsupportedFeature."""

    ETAG = "etag"
    TTL = "ttl"
    TRANSACTIONAL = "transactional"
    KEYS = "keys"  # listing and deleting keys by prefix
    WRITE = "write"  # configuration stores that accept save() and delete()
    WATCH = "watch"  # configuration stores that push changes


class Concurrency(enum.Enum):
    """How a write without an ETag treats an existing item (Dapr's semantics)."""

    FIRST_WRITE = "first-write"  # only an absent key (or the current ETag) may be written
    LAST_WRITE = "last-write"  # the last writer wins


# --- state -------------------------------------------------------------------------------------


class StoredValue(NamedTuple):
    """What a state component returns for one key: bytes, an opaque ETag, expiry (epoch s)."""

    value: bytes
    etag: str
    expires_at: float | None = None


# Not frozen: a frozen dataclass's __init__ costs a microsecond more, on every get.
@dataclass(slots=True)
class StateItem:
    """One key of a state store as the application sees it."""

    key: str
    value: Any
    etag: str | None = None
    expires_at: float | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Upsert:
    """Write ``value`` under ``key`` (a transaction or bulk entry)."""

    key: str
    value: Any
    etag: str | None = None
    ttl: float | None = None
    concurrency: Concurrency | str | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove ``key`` (a transaction or bulk entry); a missing key is not an error."""

    key: str
    etag: str | None = None
    concurrency: Concurrency | str | None = None


class SetRequest(NamedTuple):
    """A finished write as components receive it: prefixed key, encoded value, checked options."""

    key: str
    value: bytes
    etag: str | None
    first_write: bool
    ttl: float | None  # None: no expiry


class DeleteRequest(NamedTuple):
    """A finished delete as components receive it."""

    key: str
    etag: str | None
    first_write: bool


# --- pub/sub -----------------------------------------------------------------------------------


class Delivery(NamedTuple):
    """One message handed to a consumer, as a pub/sub component returns it."""

    id: str  # opaque handle used to ack, nack or extend this delivery
    data: bytes
    attempt: int  # 1 on first delivery
    metadata: Mapping[str, str]


class HandlerResult(enum.Enum):
    """What a subscription handler tells the runtime to do with a message."""

    SUCCESS = "success"  # acknowledge it
    RETRY = "retry"  # deliver it again later (dead-lettered after max attempts)
    DROP = "drop"  # give up on it: dead-lettered when a topic is set, else discarded


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigurationItem:
    """One configuration value with its coordinates; ``content`` is text as stores keep it."""

    key: str
    content: str
    group: str = ""
    label: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ConfigurationChange:
    """A pushed change: the item as it is now, or as it was when ``deleted`` is true."""

    item: ConfigurationItem
    deleted: bool = False


# --- lock --------------------------------------------------------------------------------------


class UnlockStatus(enum.Enum):
    """Outcome of an unlock, as in Dapr and Layotto."""

    SUCCESS = "success"
    LOCK_DOES_NOT_EXIST = "lock-does-not-exist"
    LOCK_BELONGS_TO_OTHERS = "lock-belongs-to-others"
