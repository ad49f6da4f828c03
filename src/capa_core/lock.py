"""The lock API: leased locks by resource id, with keep-alive and a context manager."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from .dispatch import Dispatcher
from .errors import LockNotAcquired, LockNotOwned
from .spi import LockComponent
from .types import UnlockStatus


def default_owner() -> str:
    """An owner id unique to this process and call: host, pid and a random part."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def check_expiry(expiry: float) -> float:
    if isinstance(expiry, bool) or not isinstance(expiry, int | float) or expiry <= 0:
        raise ValueError(f"lock expiry must be a positive number of seconds, got {expiry!r}")
    return float(expiry)


class Lock:
    """Locks of one lock component, keyed per app like state."""

    def __init__(
        self, component: LockComponent, dispatcher: Dispatcher, *, key_prefix: str = ""
    ) -> None:
        self.component = component
        self.name = component.name
        self.key_prefix = key_prefix
        self._call = dispatcher.call

    def ping(self) -> None:
        """Return when the component's middleware answers; ComponentUnavailable when it does not."""
        self._call(self.component, "ping", self.component.ping)

    def _resource(self, resource_id: str) -> str:
        if not isinstance(resource_id, str) or not resource_id:
            raise ValueError(f"resource ids are non-empty strings, got {resource_id!r}")
        return self.key_prefix + resource_id

    def try_lock(self, resource_id: str, owner: str, expiry: float) -> bool:
        """Take ``resource_id`` for ``owner`` for ``expiry`` seconds; False if someone holds it."""
        if not owner:
            raise ValueError("a lock owner is a non-empty string (see capa_core.default_owner)")
        return self._call(
            self.component, "try_lock", self.component.try_lock, self._resource(resource_id),
            owner, check_expiry(expiry),
        )

    def unlock(self, resource_id: str, owner: str) -> UnlockStatus:
        return self._call(
            self.component, "unlock", self.component.unlock, self._resource(resource_id), owner
        )

    def extend(self, resource_id: str, owner: str, expiry: float) -> None:
        """Keep a held lock alive for ``expiry`` more seconds; LockNotOwned if it was lost."""
        ok = self._call(
            self.component, "extend", self.component.extend, self._resource(resource_id),
            owner, check_expiry(expiry),
        )
        if not ok:
            raise LockNotOwned(f"{owner!r} no longer holds lock {resource_id!r}")

    @contextmanager
    def hold(
        self,
        resource_id: str,
        *,
        expiry: float = 10.0,
        wait: float | None = None,
        owner: str | None = None,
        keep_alive: bool = True,
    ) -> Iterator[str]:
        """Hold ``resource_id`` for the ``with`` block; yields the owner id.

        Waits up to ``wait`` seconds (forever when None) and raises LockNotAcquired after. While
        held, a background thread extends the lease every ``expiry / 3`` seconds.
        """
        owner = owner or default_owner()
        deadline = None if wait is None else time.monotonic() + wait
        pause = 0.01
        while not self.try_lock(resource_id, owner, expiry):
            if deadline is not None and time.monotonic() >= deadline:
                raise LockNotAcquired(f"lock {resource_id!r} is held by another owner")
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
        stop = threading.Event()
        keeper = None
        if keep_alive:
            keeper = threading.Thread(
                target=self._keep_alive, args=(resource_id, owner, expiry, stop), daemon=True
            )
            keeper.start()
        try:
            yield owner
        finally:
            stop.set()
            if keeper is not None:
                keeper.join()
            self.unlock(resource_id, owner)

    def _keep_alive(
        self, resource_id: str, owner: str, expiry: float, stop: threading.Event
    ) -> None:
        while not stop.wait(expiry / 3):
            try:
                self.extend(resource_id, owner, expiry)
            except LockNotOwned:
                return
            except Exception:  # transient: the next round retries before the lease runs out
                continue
