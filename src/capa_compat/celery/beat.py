"""A Celery beat scheduler whose schedule state lives in capa state, led by whoever holds a lock.

Any number of ``celery beat`` processes may run; the one holding the capa lock
``celery-beat/<app>`` sends the due tasks, the others wait to take over. The leader renews the
lock on every tick (ticks are at most a third of the lock's lifetime apart), and records each
entry's last run in capa state *before* sending it, so a beat that takes over after a crash
neither repeats nor skips a run.

Settings: ``beat_capa_lock_ttl`` (seconds, default 15): how long a dead leader blocks the others.
The state and lock components are the result backend's (``capa://NAME`` or the legacy URL's
type); with a backend that is not capa's, the embedded defaults.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any

from celery import beat

from capa_core import Lock, LockNotOwned, StateStore, default_owner

from ..kombu import runtimes
from .backend import CapaBackend

log = logging.getLogger("capa_compat.celery.beat")

DEFAULT_LOCK_TTL = 15.0


def stores_for(app: Any) -> tuple[StateStore, Lock]:
    """The state store and lock a beat of ``app`` uses (those of its capa result backend)."""
    backend = app.backend
    url = backend.url if isinstance(backend, CapaBackend) else None
    if url and not url.startswith(f"{runtimes.CAPA_SCHEME}://"):
        legacy = runtimes.legacy_component_url(url, role="result backend")
        state = runtimes.legacy_runtime("state", legacy).state(runtimes.LEGACY_NAME)
        lock = runtimes.legacy_runtime("lock", legacy).lock(runtimes.LEGACY_NAME)
        return state, lock
    name = (url or "").partition("://")[2].strip("/") or runtimes.DEFAULT_COMPONENT
    runtime = runtimes.settings_runtime()
    lock_name = name if name in runtime.settings.names("lock") else runtimes.DEFAULT_COMPONENT
    return runtime.state(name), runtime.lock(lock_name)


class Scheduler(beat.Scheduler):  # type: ignore[misc]
    """celery.beat.Scheduler with its state in capa and one active beat per application."""

    def __init__(
        self, app, schedule=None, max_interval=None, Producer=None,
        lazy=False, sync_every_tasks=None, **kwargs,
    ):
        self.lock_ttl = float(app.conf.get("beat_capa_lock_ttl") or DEFAULT_LOCK_TTL)
        self.owner = default_owner()
        self.leading = False
        name = app.main or "default"
        self.state_key = f"celery-beat/{name}/schedule"
        self.lock_id = f"celery-beat/{name}"
        self.store, self.lock = stores_for(app)
        super().__init__(
            app, schedule=schedule, max_interval=max_interval, Producer=Producer, lazy=lazy,
            sync_every_tasks=sync_every_tasks, **kwargs,
        )

    # --- schedule state in capa ----------------------------------------------------------------

    def setup_schedule(self) -> None:
        self.install_default_entries(self.data)
        self.merge_inplace(self.app.conf.beat_schedule)
        self._load_state()

    def _load_state(self) -> None:
        stored = self.store.get_value(self.state_key) or {}
        for name, entry in self.schedule.items():
            saved = stored.get(name)
            if not saved:
                continue
            entry.last_run_at = datetime.datetime.fromisoformat(saved["last_run_at"])
            entry.total_run_count = int(saved.get("total_run_count", 0))
        self._heap = None  # times changed: rebuild the queue of due entries

    def sync(self) -> None:
        if not self.leading:
            return  # a standby's view is stale: only the leader writes
        state = {
            name: {
                "last_run_at": entry.last_run_at.isoformat(),
                "total_run_count": entry.total_run_count,
            }
            for name, entry in self.schedule.items()
            if entry.last_run_at is not None
        }
        self.store.save(self.state_key, state)

    def reserve(self, entry: Any) -> Any:
        new_entry = super().reserve(entry)
        # Recorded before the task is sent: a beat taking over never sends this run again.
        self.sync()
        return new_entry

    # --- leadership -----------------------------------------------------------------------------

    def _lead(self) -> bool:
        """True while this beat holds the lock; takes it when free."""
        if self.leading:
            try:
                self.lock.extend(self.lock_id, self.owner, self.lock_ttl)
                return True
            except LockNotOwned:
                log.warning("beat lost the lock %r; waiting to lead again", self.lock_id)
                self.leading = False
        if self.lock.try_lock(self.lock_id, self.owner, self.lock_ttl):
            log.info("beat %s leads %r", self.owner, self.lock_id)
            self.leading = True
            self._load_state()  # the previous leader may have sent runs since we read
        return self.leading

    def tick(self, *args: Any, **kwargs: Any) -> float:
        keep_alive = self.lock_ttl / 3
        if not self._lead():
            return keep_alive
        return float(min(super().tick(*args, **kwargs), keep_alive))

    def close(self) -> None:
        if self.leading:
            self.sync()
            self.lock.unlock(self.lock_id, self.owner)
            self.leading = False
        super().close()  # its sync() is a no-op now

    @property
    def info(self) -> str:
        role = "leading" if self.leading else "standing by"
        return f"    . lock -> {self.lock_id} ({role}, ttl {self.lock_ttl:g}s)"
