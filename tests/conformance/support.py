"""Helpers of the conformance tests: bounded polling and the name of the component under test."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from capa_core import Runtime

COMPONENT = "conf"  # the name the component under test gets in every Runtime


class RuntimeFactory(Protocol):
    """``make_runtime(app_id=None, **overrides)``: another Runtime on the same backing store.

    ``overrides`` are merged into the component's settings table (e.g. ``lease=1``).
    """

    def __call__(self, app_id: str | None = None, **overrides: Any) -> Runtime: ...


def wait_until(
    condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def settled(read: Callable[[], Any], expected: Any, within: float = 5.0) -> Any:
    """``read()`` once it returns ``expected``, or its last value after ``within`` seconds (what
    a publisher that does not wait for the broker wrote is counted a moment later)."""
    deadline = time.monotonic() + within
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def stays(condition: Callable[[], Any], duration: float, interval: float = 0.02) -> bool:
    """True when ``condition`` holds for the whole of ``duration`` seconds."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(interval)
    return bool(condition())
