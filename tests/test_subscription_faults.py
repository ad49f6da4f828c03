"""A subscription outlives a middleware that cannot take its acks for a while."""

from __future__ import annotations

import time
from typing import Any

import pytest

from capa_core import ComponentUnavailable, Runtime


def test_a_failed_ack_does_not_stop_the_subscription(
    memory_runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus = memory_runtime.pubsub()
    component = bus.component
    real_ack = component.ack
    failures = [ComponentUnavailable("down for a moment")]

    def flaky_ack(*args: Any) -> None:
        if failures:
            raise failures.pop()
        real_ack(*args)

    monkeypatch.setattr(component, "ack", flaky_ack)
    handled: list[int] = []
    subscription = bus.subscribe("jobs", lambda m: handled.append(m.data), group="g")
    try:
        bus.publish("jobs", 1)
        bus.publish("jobs", 2)
        deadline = time.monotonic() + 5
        while sorted(set(handled)) != [1, 2] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(set(handled)) == [1, 2]  # the first ack failed; the thread went on
        assert subscription.active
        assert not failures
    finally:
        subscription.close()
