"""The dispatch point: interceptors see every API call; transient errors retry; errors translate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import pytest

from capa_core import (
    CapaError,
    ComponentUnavailable,
    ConfigurationItem,
    Delete,
    ETagMismatch,
    PublishError,
    Runtime,
    Upsert,
    dispatch,
    registry,
)
from capa_core.components.memory import MemoryPubSub, MemoryState
from capa_core.dispatch import Call, RetryPolicy
from capa_core.types import StoredValue


class Recorder:
    """An interceptor keeping (block, component, operation, attributes, outcome) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any], str]] = []

    def intercept(self, call: Call, proceed: Callable[[], Any]) -> Any:
        try:
            result = proceed()
        except Exception as exc:
            self.calls.append(self._row(call, type(exc).__name__))
            raise
        self.calls.append(self._row(call, "ok"))
        return result

    @staticmethod
    def _row(call: Call, outcome: str) -> tuple[str, str, str, dict[str, Any], str]:
        return (call.block, call.component.name, call.operation, dict(call.attributes), outcome)

    def operations(self, block: str | None = None) -> list[str]:
        return [op for b, _, op, _, _ in self.calls if block is None or b == block]


@pytest.fixture
def rt(unique: str) -> Iterator[Runtime]:
    runtime = Runtime.from_mapping(
        {"capa": {"app_id": f"d-{unique}", "default_url": f"memory://{unique}"},
         "state": {"cache": {"url": f"memory://{unique}"}}}
    )
    yield runtime
    runtime.close()


# --- interceptors --------------------------------------------------------------------------------


def test_interceptors_see_every_call_with_block_component_and_operation(
    rt: Runtime, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = Recorder()
    rt.dispatcher.add_interceptor(recorder)
    store = rt.state("cache")
    store.save("k", 1)
    store.get("k")
    store.bulk_save([Upsert("a", 1)])
    store.bulk_get(["a"])
    store.bulk_delete(["a"])
    store.transaction([Delete("k")])
    store.keys()
    store.delete_prefix("")
    with pytest.raises(ETagMismatch):
        store.delete("k", etag="stale")
    assert recorder.operations("state") == [
        "save", "get", "bulk_save", "bulk_get", "bulk_delete", "transaction", "keys",
        "delete_prefix", "delete",
    ]
    assert {(b, c) for b, c, *_ in recorder.calls} == {("state", "cache")}
    assert recorder.calls[-1][-1] == "ETagMismatch"  # failures pass through interceptors too

    topic = f"t-{unique}"
    bus = rt.pubsub()
    bus.publish(topic, 1)
    bus.bulk_publish(topic, [2])
    messages = bus.pull(topic, group="g", max_messages=2, timeout=1)
    messages[0].ack()
    messages[1].nack(delay=0)
    bus.purge(topic, group="g")
    ops = recorder.operations("pubsub")
    assert ops[:2] == ["publish", "bulk_publish"]
    assert {"ensure_group", "pull", "ack", "nack", "purge"} <= set(ops)
    publish = next(row for row in recorder.calls if row[2] == "publish")
    assert publish[:4] == ("pubsub", "default", "publish", {"topic": topic})
    pull = next(row for row in recorder.calls if row[2] == "pull")
    assert pull[3] == {"topic": topic, "group": "g"}

    config = rt.configuration()
    config.save([ConfigurationItem("k", "v")])
    config.get(["k"])
    config.subscribe(["k"], lambda changes: None).close()
    config.delete(["k"])
    assert recorder.operations("configuration") == ["save", "get", "subscribe", "delete"]

    lock = rt.lock()
    lock.try_lock("r", "me", 5)
    lock.extend("r", "me", 5)
    lock.unlock("r", "me")
    assert recorder.operations("lock") == ["try_lock", "extend", "unlock"]

    monkeypatch.setenv(f"D_{unique}", "x")
    rt.secrets().get(f"D_{unique}")
    rt.secrets().bulk_get()
    assert recorder.operations("secrets") == ["get", "bulk_get"]


def test_the_lease_keeper_and_subscriptions_go_through_the_dispatch_point(
    unique: str,
) -> None:
    document = {"capa": {"default_url": f"memory://{unique}"},
                "pubsub": {"default": {"url": f"memory://{unique}", "lease": 0.3}}}
    recorder = Recorder()
    with Runtime.from_mapping(document) as rt:
        rt.dispatcher.add_interceptor(recorder)
        bus = rt.pubsub()
        bus.publish(f"t-{unique}", 1)
        [message] = bus.pull(f"t-{unique}", timeout=1)
        deadline = time.monotonic() + 3
        while "extend" not in recorder.operations() and time.monotonic() < deadline:
            time.sleep(0.02)
        message.ack()
    assert "extend" in recorder.operations("pubsub")


def test_interceptors_nest_in_the_order_they_were_added(rt: Runtime) -> None:
    trail: list[str] = []

    class Named:
        def __init__(self, name: str) -> None:
            self.name = name

        def intercept(self, call: Call, proceed: Callable[[], Any]) -> Any:
            trail.append(f"{self.name}>")
            try:
                return proceed()
            finally:
                trail.append(f"<{self.name}")

    outer, inner = Named("outer"), Named("inner")
    rt.dispatcher.add_interceptor(outer)
    rt.dispatcher.add_interceptor(inner)
    rt.dispatcher.add_interceptor(outer)  # adding again changes nothing
    rt.state().get("k")
    assert trail == ["outer>", "inner>", "<inner", "<outer"]
    rt.dispatcher.remove_interceptor(outer)
    trail.clear()
    rt.state().get("k")
    assert trail == ["inner>", "<inner"]


def test_an_interceptor_may_answer_without_proceeding(rt: Runtime) -> None:
    class Cached:
        def intercept(self, call: Call, proceed: Callable[[], Any]) -> Any:
            if call.operation == "get":
                return StoredValue(b'"from the interceptor"', "etag")
            return proceed()

    rt.dispatcher.add_interceptor(Cached())
    assert rt.state().get_value("anything") == "from the interceptor"


def test_installed_interceptors_reach_every_dispatcher(rt: Runtime, unique: str) -> None:
    recorder = Recorder()
    dispatch.install(recorder)
    try:
        rt.state().get("k")
        with Runtime.from_mapping({"capa": {"default_url": f"memory://{unique}"}}) as later:
            later.state().get("k")
    finally:
        dispatch.uninstall(recorder)
    rt.state().get("k")
    assert recorder.operations() == ["get", "get"]


# --- retries and error translation ---------------------------------------------------------------


class DriverDown(ConnectionError):
    """What a driver raises when its server is unreachable."""


class DriverConflict(Exception):
    """A driver's own error that the component maps to ETagMismatch."""


class FlakyState(MemoryState):
    """Memory state whose get() fails with the errors named in metadata, then works."""

    kind = "flaky"
    transient_errors = (DriverDown,)

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.failures: list[Exception] = []
        self.attempts = 0

    def get(self, key: str) -> StoredValue | None:
        self.attempts += 1
        if self.failures:
            raise self.failures.pop(0)
        return super().get(key)

    def translate_error(self, exc: Exception) -> CapaError | None:
        if isinstance(exc, DriverConflict):
            return ETagMismatch("?", str(exc))
        return None


class Flaky(NamedTuple):
    runtime: Runtime
    component: FlakyState

    def get(self, key: str) -> Any:
        return self.runtime.state("flaky").get(key)


@pytest.fixture
def flaky(monkeypatch: pytest.MonkeyPatch, unique: str) -> Iterator[Callable[..., Flaky]]:
    """A Runtime whose state component "flaky" fails its next get() calls with ``failures``."""
    monkeypatch.setitem(registry.ALIASES, "state.flaky", f"{__name__}:FlakyState")
    made: list[Runtime] = []

    def make(*failures: Exception, retries: int = 3) -> Flaky:
        rt = Runtime.from_mapping(
            {"capa": {"retries": retries, "default_url": f"memory://{unique}"},
             "state": {"flaky": {"type": "state.flaky"}}}
        )
        made.append(rt)
        rt.dispatcher.retry = RetryPolicy(rt.dispatcher.retry.attempts, backoff=0.01)
        component = rt.state("flaky").component
        assert isinstance(component, FlakyState)
        component.failures = list(failures)
        return Flaky(rt, component)

    yield make
    for rt in made:
        rt.close()


def test_transient_errors_are_retried(flaky: Callable[..., Flaky]) -> None:
    case = flaky(DriverDown("reset"), DriverDown("reset"))
    recorder = Recorder()
    case.runtime.dispatcher.add_interceptor(recorder)
    assert case.get("k") is None
    assert case.component.attempts == 3
    assert recorder.operations() == ["get"]  # one API call, however many attempts


def test_transient_errors_past_the_retries_are_component_unavailable(
    flaky: Callable[..., Flaky],
) -> None:
    case = flaky(*[DriverDown("refused")] * 3)
    with pytest.raises(ComponentUnavailable) as raised:
        case.get("k")
    assert case.component.attempts == 3
    message = str(raised.value)
    assert "state.flaky" in message and "'flaky'" in message and "during get" in message
    assert isinstance(raised.value.__cause__, DriverDown)
    assert isinstance(raised.value, ConnectionError)


def test_retries_come_from_settings(flaky: Callable[..., Flaky]) -> None:
    case = flaky(DriverDown("x"), retries=1)
    with pytest.raises(ComponentUnavailable):
        case.get("k")
    assert case.component.attempts == 1
    case = flaky(*[DriverDown("x")] * 4, retries=5)
    assert case.get("k") is None
    assert case.component.attempts == 5


def test_other_driver_errors_are_translated_not_retried(
    flaky: Callable[..., Flaky],
) -> None:
    case = flaky(DriverConflict("version clash"))
    with pytest.raises(ETagMismatch, match="version clash") as raised:
        case.get("k")
    assert case.component.attempts == 1
    assert isinstance(raised.value.__cause__, DriverConflict)


def test_untranslated_errors_pass_through_unchanged(flaky: Callable[..., Flaky]) -> None:
    error = KeyError("driver bug")
    case = flaky(error)
    with pytest.raises(KeyError) as raised:
        case.get("k")
    assert raised.value is error
    assert case.component.attempts == 1


def test_capa_errors_are_neither_retried_nor_translated(
    flaky: Callable[..., Flaky],
) -> None:
    case = flaky(ComponentUnavailable("already typed"))
    with pytest.raises(ComponentUnavailable, match="already typed"):
        case.get("k")
    assert case.component.attempts == 1


def test_a_transient_error_that_recovers_into_a_translated_one(
    flaky: Callable[..., Flaky],
) -> None:
    case = flaky(DriverDown("blip"), DriverConflict("then a conflict"))
    with pytest.raises(ETagMismatch):
        case.get("k")
    assert case.component.attempts == 2


def test_retry_policy_delays() -> None:
    assert RetryPolicy(attempts=1).delays() == []
    assert RetryPolicy(attempts=4, backoff=0.1, max_backoff=0.25).delays() == [0.1, 0.2, 0.25]


class PickyPubSub(MemoryPubSub):
    """Memory pub/sub refusing messages that mention "refused", as a broker might."""

    kind = "picky"

    def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        if b"refused" in data:
            raise DriverConflict("message rejected by the broker")
        super().publish(topic, data, metadata)

    def translate_error(self, exc: Exception) -> CapaError | None:
        return PublishError({"?": exc}) if isinstance(exc, DriverConflict) else None


def test_bulk_publish_reports_failed_entries_by_id(
    monkeypatch: pytest.MonkeyPatch, unique: str
) -> None:
    monkeypatch.setitem(registry.ALIASES, "pubsub.picky", f"{__name__}:PickyPubSub")
    with Runtime.from_mapping({"pubsub": {"p": {"type": "pubsub.picky"}}}) as rt:
        bus = rt.pubsub("p")
        topic = f"t-{unique}"
        with pytest.raises(PublishError) as raised:
            bus.bulk_publish(topic, {"ok-1": "fine", "no-1": "refused", "ok-2": "fine too",
                                     "no-2": {"why": "refused"}})
        assert set(raised.value.failed) == {"no-1", "no-2"}
        assert all(isinstance(e, PublishError) for e in raised.value.failed.values())
        assert "no-1" in str(raised.value)
        delivered = bus.pull(topic, max_messages=10, timeout=1)
        assert sorted(m.data for m in delivered) == ["fine", "fine too"]
        with pytest.raises(PublishError):
            bus.publish(topic, "refused")  # a single publish is translated the same way
