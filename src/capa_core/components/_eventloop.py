"""A component's private asyncio event loop, run by the calling thread when free, else by a helper.

Drivers written for asyncio (nats-py, pika's asyncio adapter) need a running loop, while the
component SPI is called from plain threads. Handing every call to a loop thread costs two thread
switches per call, which on a busy machine adds more to a sub-millisecond round trip than the
round trip itself. So a calling thread that finds the loop idle runs it itself
(run_until_complete) for the length of its call; a thread that finds it busy hands its coroutine
to whichever thread runs the loop and waits on a lock. A daemon helper thread owned by the
component runs the loop for work handed over when no caller is running it, and otherwise turns
it over briefly every ``tick`` seconds so timers, heartbeats and pings are served between calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("capa_core.components")

T = TypeVar("T")


class PrivateLoop:
    """One event loop, run by one thread at a time: a caller, or the helper thread."""

    def __init__(
        self, name: str, unavailable: Callable[[str], Exception], *, tick: float = 0.05
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self._unavailable = unavailable
        self._tick = tick
        self._running = threading.Lock()  # held by the thread running the loop
        self._handed = 0  # calls handed over and not finished yet
        self._handed_lock = threading.Lock()
        self._progress = asyncio.Event()  # set on the loop whenever a handed-over call ends
        self._wake = threading.Event()
        self._closed = False
        self._soon: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._soon_lock = threading.Lock()
        self._soon_scheduled = False
        self._helper = threading.Thread(target=self._serve_forever, name=name, daemon=True)
        self._helper.start()

    # --- calls ----------------------------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the loop and return its result; give up after ``timeout`` s."""
        if self._closed:
            coroutine.close()
            raise self._unavailable("the component is closed")
        if not _in_event_loop() and self._running.acquire(blocking=False):
            try:
                return self._run_here(coroutine, timeout)
            finally:
                self._release()
        finished, started = self._hand_over(coroutine)
        if not finished.acquire(timeout=timeout):
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(lambda: started and started[0].cancel())
            raise self._unavailable(f"no answer within {timeout:.0f} s")
        return started[0].result()

    def soon(self, fn: Callable[..., object], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop the next time any thread runs it; do not wait.

        For work nobody waits for (acks): a burst of them costs one wake-up of the loop, and
        it runs before any call made after this one.
        """
        with self._soon_lock:
            self._soon.append((fn, args))
            if self._soon_scheduled:
                return
            self._soon_scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
            self.loop.call_soon_threadsafe(self._run_soon)

    def _run_soon(self) -> None:
        with self._soon_lock:
            queued, self._soon = self._soon, []
            self._soon_scheduled = False
        for fn, args in queued:
            try:
                fn(*args)
            except Exception:
                log.exception("%s failed", getattr(fn, "__qualname__", "a call"))

    def _run_here(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        task = self.loop.create_task(coroutine)
        expired: list[bool] = []

        def expire() -> None:  # cheaper than asyncio.timeout, which shows on short calls
            expired.append(True)
            task.cancel()

        deadline = self.loop.call_later(timeout, expire)
        try:
            return self.loop.run_until_complete(task)
        except asyncio.CancelledError:
            if expired:
                raise self._unavailable(f"no answer within {timeout:.0f} s") from None
            raise
        finally:
            deadline.cancel()

    def _release(self) -> None:
        self._running.release()
        with self._handed_lock:
            handed = self._handed
        if handed:  # calls handed over while this thread ran the loop: the helper finishes them
            self._wake.set()

    def _hand_over(
        self, coroutine: Coroutine[Any, Any, T]
    ) -> tuple[threading.Lock, list[asyncio.Task[T]]]:
        """Queue ``coroutine`` for whichever thread runs the loop; the lock opens when it ends."""
        finished = threading.Lock()
        finished.acquire()
        started: list[asyncio.Task[T]] = []

        def done(task: asyncio.Task[T]) -> None:
            if not task.cancelled():
                task.exception()  # retrieved here, in case the caller gave up waiting
            with self._handed_lock:
                self._handed -= 1
            self._progress.set()
            finished.release()

        def start() -> None:
            task = self.loop.create_task(coroutine)
            started.append(task)
            task.add_done_callback(done)

        with self._handed_lock:
            self._handed += 1
        try:
            self.loop.call_soon_threadsafe(start)
        except RuntimeError:  # the loop is closed
            with self._handed_lock:
                self._handed -= 1
            coroutine.close()
            raise self._unavailable("the component is closed") from None
        self._wake.set()
        return finished, started

    # --- the helper thread ----------------------------------------------------------------------

    def _serve_forever(self) -> None:
        while not self._closed:
            self._wake.wait(self._tick)
            self._wake.clear()
            if self._closed or not self._running.acquire(blocking=False):
                continue  # a caller runs the loop: it serves everything meanwhile
            try:
                if not self._closed:
                    self.loop.run_until_complete(self._serve())
            except Exception:  # the helper must outlive any failure of one round
                log.exception("the event loop helper failed")
            finally:
                self._running.release()

    async def _serve(self) -> None:
        """Serve what is due (I/O, timers), then everything handed over until none is left."""
        await asyncio.sleep(0)
        while True:
            self._progress.clear()
            with self._handed_lock:
                if self._handed == 0:
                    return
            await self._progress.wait()

    # --- closing --------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the helper, cancel what is left on the loop and close it."""
        self._closed = True
        self._wake.set()
        self._helper.join(10)
        if not self._running.acquire(timeout=10):
            log.warning("the event loop is still in use; leaving it open")
            return
        try:
            self.loop.run_until_complete(_cancel_all())
            self.loop.close()
        finally:
            self._running.release()


def _in_event_loop() -> bool:
    return asyncio._get_running_loop() is not None


async def _cancel_all() -> None:
    current = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not current]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=2)
