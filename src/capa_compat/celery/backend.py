"""A Celery result backend on a capa state component (Celery's KeyValueStoreBackend primitives).

URLs: ``capa://NAME`` (a configured state component; ``capa://`` the embedded default) or
``capa+<legacy url>`` (``capa+redis://...``, ``capa+postgresql://...``, ``capa+sqlite:///x.db``):
the state component of that type built from the URL. ``result_expires`` becomes the TTL of every
key; chord counters are incremented atomically with an ETag compare-and-swap loop.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from celery import states
from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import TimeoutError as CeleryTimeoutError
from kombu.utils.encoding import bytes_to_str

from capa_core import Concurrency, ETagMismatch, Feature, StateStore

from ..kombu import runtimes

_QUICK_POLL = 0.00025  # seconds between polls while a quick task may be finishing
_QUICK_FOR = 0.004  # how long polls stay quick before backing off
_BACKOFF = 1.25
_CAS_ATTEMPTS = 10_000


def _key(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def poll_intervals(interval: float) -> Iterator[float]:
    """Sleeps between result polls: quick at first (most tasks are short), then up to ``interval``.

    A poll is one read of the state store; the quick phase costs about 16 of them.
    """
    nap = min(_QUICK_POLL, interval)
    waited = 0.0
    while True:
        yield nap
        waited += nap
        if waited >= _QUICK_FOR:
            nap = min(nap * _BACKOFF, interval)


def state_store_for(url: str | None) -> StateStore:
    """The capa state client a backend URL names (``capa://NAME`` or a legacy URL)."""
    if not url or url.startswith(f"{runtimes.CAPA_SCHEME}://"):
        name = (url or "").partition("://")[2].strip("/") or runtimes.DEFAULT_COMPONENT
        runtime, name = runtimes.resolve("state", name)
    else:
        runtime, name = runtimes.resolve(
            "state", runtimes.legacy_component_url(url, role="result backend")
        )
    return runtime.state(name)


class CapaBackend(KeyValueStoreBackend):  # type: ignore[misc]
    """Task results, group results and chord counters in capa state."""

    supports_autoexpire = True
    supports_native_join = True
    implements_incr = True
    persistent = True

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app=app, url=url, **kwargs)
        self.url = url or f"{runtimes.CAPA_SCHEME}://{runtimes.DEFAULT_COMPONENT}"
        self._store: StateStore | None = None
        self._store_pid = 0

    @property
    def store(self) -> StateStore:
        import os

        # A prefork pool child must not reuse the parent's connections.
        if self._store is None or self._store_pid != os.getpid():
            self._store = state_store_for(self.url)
            self._store_pid = os.getpid()
        return self._store

    def _ttl(self, seconds: Any) -> float | None:
        if not seconds or Feature.TTL not in self.store.component.features:
            return None
        return float(seconds)

    def as_uri(self, include_password: bool = False) -> str:
        if self.url.startswith(f"{runtimes.CAPA_SCHEME}://"):
            return self.url
        return f"{runtimes.CAPA_PREFIX}{self.url}" if include_password else "capa+<legacy url>"

    # --- KeyValueStoreBackend primitives -----------------------------------------------------

    def get(self, key: bytes | str) -> Any:
        return self.store.get_value(_key(key))

    def mget(self, keys: Sequence[bytes | str]) -> list[Any]:
        items = self.store.bulk_get([_key(k) for k in keys])
        return [None if item is None else item.value for item in items]

    def set(self, key: bytes | str, value: Any) -> None:
        if isinstance(value, str):
            value = value.encode()
        self.store.save(_key(key), value, ttl=self._ttl(self.expires))

    def delete(self, key: bytes | str) -> None:
        self.store.delete(_key(key))

    def incr(self, key: bytes | str) -> int:
        """Add one to a counter atomically: compare-and-swap on the ETag until it holds."""
        name = _key(key)
        for _ in range(_CAS_ATTEMPTS):
            item = self.store.get(name)
            try:
                if item is None:
                    self.store.save(
                        name, 1, ttl=self._ttl(self.expires), concurrency=Concurrency.FIRST_WRITE
                    )
                    return 1
                value = int(item.value) + 1
                ttl = None if item.expires_at is None else max(item.expires_at - time.time(), 1)
                self.store.save(name, value, etag=item.etag, ttl=ttl)
                return value
            except ETagMismatch:
                continue  # another worker counted in between: read again
        raise RuntimeError(f"could not increment {name!r}: too much contention")

    def expire(self, key: bytes | str, value: Any) -> None:
        """Give an existing key a new lifetime (0 or None: keep it forever)."""
        name = _key(key)
        for _ in range(100):
            item = self.store.get(name)
            if item is None:
                return
            try:
                self.store.save(name, item.value, etag=item.etag, ttl=self._ttl(value))
                return
            except ETagMismatch:
                continue

    # --- waiting: poll quickly first, so a short task's result is seen within milliseconds ---

    def wait_for(
        self, task_id: str, timeout: float | None = None, interval: float = 0.5,
        no_ack: bool = True, on_interval: Any = None,
    ) -> Any:
        self._ensure_not_eager()
        deadline = None if timeout is None else time.monotonic() + timeout
        for nap in poll_intervals(interval):
            meta = self.get_task_meta(task_id)
            if meta["status"] in states.READY_STATES:
                return meta
            if on_interval:
                on_interval()
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CeleryTimeoutError("The operation timed out.")
                nap = min(nap, left)
            time.sleep(nap)
        raise AssertionError("unreachable")

    def get_many(
        self, task_ids: Any, timeout: float | None = None, interval: float = 0.5,
        no_ack: bool = True, on_message: Any = None, on_interval: Any = None,
        max_iterations: int | None = None, READY_STATES: Any = states.READY_STATES,
    ) -> Iterator[tuple[str, Any]]:
        interval = 0.5 if interval is None else interval
        ids = set(task_ids)
        for task_id in list(ids):
            cached = self._cache.get(task_id)
            if cached is not None and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield bytes_to_str(task_id), cached
        deadline = None if timeout is None else time.monotonic() + timeout
        naps = poll_intervals(interval)
        iterations = 0
        while ids:
            keys = list(ids)
            found = self._mget_to_results(
                self.mget([self.get_key_for_task(k) for k in keys]), keys, READY_STATES
            )
            self._cache.update(found)
            ids.difference_update(bytes_to_str(k) for k in found)
            for key, value in found.items():
                if on_message is not None:
                    on_message(value)
                yield bytes_to_str(key), value
            if not ids:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise CeleryTimeoutError(f"Operation timed out ({timeout})")
            if on_interval:
                on_interval()
            nap = next(naps)
            if deadline is not None:
                nap = max(0.0, min(nap, deadline - time.monotonic()))
            time.sleep(nap)
            iterations += 1
            if max_iterations and iterations >= max_iterations:
                break
