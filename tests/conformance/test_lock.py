"""Conformance of lock components: every Target of the "lock" block passes the same tests.

Dapr components-contrib's lock cases (independent resources, contention, wrong owner, missing
lock, owner unlock, expiry) plus keep-alive, app-id scoping and the hold() context manager.
"""

from __future__ import annotations

import threading
import time

import pytest
from tests.conformance.support import COMPONENT, RuntimeFactory, wait_until

from capa_core import Lock, LockNotAcquired, LockNotOwned, Runtime, UnlockStatus, default_owner

BLOCK = "lock"


class TestLockConformance:
    @pytest.fixture
    def lock(self, runtime: Runtime) -> Lock:
        return runtime.lock(COMPONENT)

    def test_two_resources_lock_independently(self, lock: Lock) -> None:
        assert lock.try_lock("resource-1", "owner-1", 10)
        assert lock.try_lock("resource-2", "owner-2", 10)
        assert lock.unlock("resource-1", "owner-1") is UnlockStatus.SUCCESS
        assert lock.unlock("resource-2", "owner-2") is UnlockStatus.SUCCESS

    def test_a_held_lock_cannot_be_taken(self, lock: Lock) -> None:
        assert lock.try_lock("r", "owner-1", 10)
        assert not lock.try_lock("r", "owner-2", 10)
        assert not lock.try_lock("r", "owner-1", 10)  # not reentrant either

    def test_unlock_statuses(self, lock: Lock) -> None:
        assert lock.unlock("never-locked", "owner-1") is UnlockStatus.LOCK_DOES_NOT_EXIST
        assert lock.try_lock("r", "owner-1", 10)
        assert lock.unlock("r", "owner-2") is UnlockStatus.LOCK_BELONGS_TO_OTHERS
        assert not lock.try_lock("r", "owner-2", 10)  # a refused unlock leaves it held
        assert lock.unlock("r", "owner-1") is UnlockStatus.SUCCESS
        assert lock.unlock("r", "owner-1") is UnlockStatus.LOCK_DOES_NOT_EXIST
        assert lock.try_lock("r", "owner-2", 10)

    def test_locks_expire(self, lock: Lock) -> None:
        assert lock.try_lock("r", "owner-1", 1)
        assert not lock.try_lock("r", "owner-2", 10)
        started = time.monotonic()
        wait_until(lambda: lock.try_lock("r", "owner-2", 10), timeout=3.0, interval=0.05)
        assert time.monotonic() - started >= 0.5
        assert lock.unlock("r", "owner-1") is UnlockStatus.LOCK_BELONGS_TO_OTHERS

    def test_an_expired_lock_does_not_exist(self, lock: Lock) -> None:
        assert lock.try_lock("r", "owner-1", 1)
        wait_until(
            lambda: lock.unlock("r", "owner-1") is UnlockStatus.LOCK_DOES_NOT_EXIST,
            timeout=3.0, interval=0.1,
        )

    def test_only_the_owner_extends(self, lock: Lock) -> None:
        assert lock.try_lock("r", "owner-1", 1)
        with pytest.raises(LockNotOwned):
            lock.extend("r", "owner-2", 10)
        lock.extend("r", "owner-1", 10)
        time.sleep(1.3)  # past the first expiry: the extension holds it
        assert not lock.try_lock("r", "owner-2", 10)
        assert lock.unlock("r", "owner-1") is UnlockStatus.SUCCESS
        with pytest.raises(LockNotOwned):
            lock.extend("r", "owner-1", 10)  # released: nothing left to extend

    def test_arguments_are_checked(self, lock: Lock) -> None:
        for expiry in (0, -1, "10", True):
            with pytest.raises(ValueError):
                lock.try_lock("r", "owner", expiry)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            lock.try_lock("", "owner", 10)
        with pytest.raises(ValueError):
            lock.try_lock("r", "", 10)
        assert lock.try_lock("r", "owner", 10)

    def test_contention_has_exactly_one_winner(self, lock: Lock) -> None:
        winners: list[str] = []
        start = threading.Barrier(8)

        def contend(n: int) -> None:
            start.wait(5)
            if lock.try_lock("contended", f"owner-{n}", 10):
                winners.append(f"owner-{n}")

        threads = [threading.Thread(target=contend, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(winners) == 1

    def test_runtimes_of_one_app_share_locks_and_other_apps_do_not(
        self, lock: Lock, make_runtime: RuntimeFactory, unique: str
    ) -> None:
        same_app = make_runtime().lock(COMPONENT)
        other_app = make_runtime(app_id=f"other-{unique}").lock(COMPONENT)
        assert lock.try_lock("r", "owner-1", 10)
        assert not same_app.try_lock("r", "owner-2", 10)
        assert other_app.try_lock("r", "owner-3", 10)  # "r" of another app is another lock

    # --- hold() ---------------------------------------------------------------------------------

    def test_hold_takes_and_releases(self, lock: Lock) -> None:
        with lock.hold("r", expiry=5, wait=1) as owner:
            assert owner
            assert not lock.try_lock("r", "someone-else", 5)
        assert lock.try_lock("r", "someone-else", 5)

    def test_hold_releases_when_the_block_raises(self, lock: Lock) -> None:
        with pytest.raises(RuntimeError), lock.hold("r", expiry=5, wait=1):
            raise RuntimeError("boom")
        assert lock.unlock("r", "anyone") is UnlockStatus.LOCK_DOES_NOT_EXIST

    def test_hold_gives_up_after_its_wait(self, lock: Lock) -> None:
        assert lock.try_lock("r", "holder", 10)
        started = time.monotonic()
        with pytest.raises(LockNotAcquired), lock.hold("r", expiry=5, wait=0.3):
            pytest.fail("the lock is held by another owner")
        assert 0.25 <= time.monotonic() - started < 2.0

    def test_hold_waits_for_the_lock_to_be_released(self, lock: Lock) -> None:
        owner = default_owner()
        assert lock.try_lock("r", owner, 10)
        timer = threading.Timer(0.3, lock.unlock, ("r", owner))
        timer.start()
        try:
            with lock.hold("r", expiry=5, wait=5) as holder:
                assert holder != owner
        finally:
            timer.join()

    def test_hold_keeps_the_lock_alive_past_its_expiry(self, lock: Lock) -> None:
        with lock.hold("r", expiry=1, wait=1, owner="keeper") as owner:
            assert owner == "keeper"
            time.sleep(1.5)
            assert not lock.try_lock("r", "someone-else", 5)
        assert lock.try_lock("r", "someone-else", 5)
