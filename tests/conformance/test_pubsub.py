"""Conformance of pub/sub components: every Target of the "pubsub" block passes the same tests.

Dapr components-contrib's pub/sub cases (at-least-once with a failing handler, topic isolation,
stopping one subscriber, bulk publish) plus what Dapr leaves out: consumer groups, explicit
ack/nack, dead letters, leases and their extension, the CloudEvents envelope.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from tests.conformance.support import COMPONENT, RuntimeFactory, settled, stays, wait_until

from capa_core import HandlerResult, Message, PubSub, Runtime, UnsupportedFeature

BLOCK = "pubsub"

PAYLOADS: dict[str, Any] = {
    "dict": {"order": 1, "items": [{"sku": "a", "qty": 2}], "paid": True, "note": None},
    "list": [1, "two", 3.5, None],
    "unicode": "grüße 日本語 \U0001f600",
    "empty-string": "",
    "int": 7,
    "none": None,
    "bytes": b"\x00\x01\xfe\xffbinary",
    "empty-bytes": b"",
}


class Inbox:
    """A subscription handler that records what it handled; thread-safe."""

    def __init__(self, fail: Callable[[Message, int], bool] | None = None,
                 pause: float = 0.0) -> None:
        self.handled: list[Message] = []
        self.calls = 0
        self._fail = fail
        self._pause = pause
        self._lock = threading.Lock()

    def __call__(self, message: Message) -> HandlerResult:
        with self._lock:
            self.calls += 1
            call = self.calls
        if self._pause:
            time.sleep(self._pause)
        if self._fail is not None and self._fail(message, call):
            raise RuntimeError(f"handler failing on purpose (call {call})")
        with self._lock:
            self.handled.append(message)
        return HandlerResult.SUCCESS

    @property
    def data(self) -> list[Any]:
        with self._lock:
            return [m.data for m in self.handled]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Any]:
        wait_until(lambda: len(self.handled) >= count, timeout=timeout)
        return self.data


def declare(bus: PubSub, topic: str, group: str) -> None:
    """Declare ``group`` on ``topic`` (through the API: a pull with nothing waiting)."""
    assert bus.pull(topic, group=group, timeout=0.05) == []


def pull_n(
    bus: PubSub, topic: str, count: int, *, group: str = "g", timeout: float = 5.0, **options: Any
) -> list[Message]:
    """Pull until ``count`` messages arrived (never acking them); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    got: list[Message] = []
    while len(got) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"got {len(got)} of {count} messages within {timeout}s")
        got += bus.pull(
            topic, group=group, max_messages=count - len(got), timeout=min(remaining, 1.0),
            **options,
        )
    return got


class TestPubSubConformance:
    @pytest.fixture
    def bus(self, runtime: Runtime) -> PubSub:
        return runtime.pubsub(COMPONENT)

    @pytest.fixture
    def topic(self, unique: str) -> str:
        return f"orders-{unique}"

    # --- payloads and the envelope --------------------------------------------------------------

    def test_ping_answers(self, bus: PubSub) -> None:
        assert bus.ping() is None

    @pytest.mark.parametrize("name", list(PAYLOADS))
    def test_payloads_round_trip(self, bus: PubSub, topic: str, name: str) -> None:
        declare(bus, topic, "g")
        bus.publish(topic, PAYLOADS[name])
        [message] = pull_n(bus, topic, 1)
        message.ack()
        assert message.data == PAYLOADS[name]
        assert type(message.data) is type(PAYLOADS[name])
        assert message.topic == topic
        assert message.attempt == 1

    @pytest.mark.parametrize("name", ["dict", "unicode", "bytes", "empty-bytes"])
    def test_raw_payloads_round_trip_without_an_envelope(
        self, bus: PubSub, topic: str, name: str
    ) -> None:
        declare(bus, topic, "g")
        bus.publish(topic, PAYLOADS[name], raw=True)
        [message] = pull_n(bus, topic, 1)
        message.ack()
        assert message.data == PAYLOADS[name]
        assert dict(message.event) == {}
        assert message.id

    def test_cloudevents_envelope(self, bus: PubSub, topic: str, runtime: Runtime) -> None:
        declare(bus, topic, "g")
        before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
        bus.publish(topic, {"n": 1})
        bus.publish(topic, b"bin", event_type="com.example.binary")
        first, second = pull_n(bus, topic, 2)
        for message in (first, second):
            message.ack()
            event = message.event
            assert event["specversion"] == "1.0"
            assert event["id"] and event["id"] == message.id
            assert event["source"] == runtime.app_id
            assert event["topic"] == topic
            assert event["pubsubname"] == COMPONENT
            sent = datetime.datetime.fromisoformat(event["time"])
            assert before <= sent <= datetime.datetime.now(datetime.UTC)
        assert first.id != second.id
        assert first.event["type"] == "com.capa.event.sent"
        assert first.event["datacontenttype"] == "application/json"
        assert first.data == {"n": 1}
        assert second.event["type"] == "com.example.binary"
        assert second.event["datacontenttype"] == "application/octet-stream"
        assert second.data == b"bin"

    def test_metadata_travels_with_the_message(self, bus: PubSub, topic: str) -> None:
        declare(bus, topic, "g")
        bus.publish(topic, 1, metadata={"x-tenant": "acme", "x-trace": "abc-123"})
        [message] = pull_n(bus, topic, 1)
        message.ack()
        assert message.metadata["x-tenant"] == "acme"
        assert message.metadata["x-trace"] == "abc-123"

    # --- groups ---------------------------------------------------------------------------------

    def test_messages_published_before_any_group_wait_for_the_first_group(
        self, bus: PubSub, topic: str
    ) -> None:
        bus.publish(topic, "early")
        [early] = pull_n(bus, topic, 1, group="first")
        early.ack()
        declare(bus, topic, "second")
        bus.publish(topic, "late")
        [late] = pull_n(bus, topic, 1, group="first")
        late.ack()
        [only_late] = pull_n(bus, topic, 1, group="second")
        only_late.ack()
        assert (early.data, late.data, only_late.data) == ("early", "late", "late")
        assert bus.pull(topic, group="second", timeout=0.2) == []

    def test_two_groups_each_get_every_message(self, bus: PubSub, topic: str) -> None:
        billing, shipping = Inbox(), Inbox()
        bus.subscribe(topic, billing, group="billing")
        bus.subscribe(topic, shipping, group="shipping")
        for n in range(10):
            bus.publish(topic, n)
        assert sorted(billing.wait_for(10)) == list(range(10))
        assert sorted(shipping.wait_for(10)) == list(range(10))
        assert stays(lambda: len(billing.handled) == len(shipping.handled) == 10, 0.3)

    def test_two_topics_are_isolated(self, bus: PubSub, unique: str) -> None:
        orders, invoices = Inbox(), Inbox()
        bus.subscribe(f"orders-{unique}", orders, group="g")
        bus.subscribe(f"invoices-{unique}", invoices, group="g")
        for n in range(5):
            bus.publish(f"orders-{unique}", f"order-{n}")
            bus.publish(f"invoices-{unique}", f"invoice-{n}")
        assert sorted(orders.wait_for(5)) == [f"order-{n}" for n in range(5)]
        assert sorted(invoices.wait_for(5)) == [f"invoice-{n}" for n in range(5)]
        assert stays(lambda: len(orders.handled) == len(invoices.handled) == 5, 0.3)
        assert {m.topic for m in orders.handled} == {f"orders-{unique}"}

    def test_competing_consumers_in_one_group_split_the_work(
        self, bus: PubSub, topic: str, make_runtime: RuntimeFactory
    ) -> None:
        other = make_runtime().pubsub(COMPONENT)
        first, second = Inbox(pause=0.01), Inbox(pause=0.01)
        bus.subscribe(topic, first, group="workers", batch=1)
        other.subscribe(topic, second, group="workers", batch=1)
        declare(bus, topic, "workers")
        total = 40
        for n in range(total):
            bus.publish(topic, n)
        wait_until(lambda: len(first.handled) + len(second.handled) >= total, timeout=15)
        assert stays(lambda: len(first.handled) + len(second.handled) == total, 0.5)
        handled = first.data + second.data
        assert sorted(handled) == list(range(total))  # each exactly once
        assert first.handled and second.handled, "both consumers should have had work"

    def test_closing_one_subscriber_stops_only_it(
        self, bus: PubSub, topic: str
    ) -> None:
        kept, closed = Inbox(), Inbox()
        bus.subscribe(topic, kept, group="kept")
        subscription = bus.subscribe(topic, closed, group="closed")
        for n in range(3):
            bus.publish(topic, n)
        kept.wait_for(3)
        closed.wait_for(3)
        subscription.close()
        assert not subscription.active
        for n in range(3, 6):
            bus.publish(topic, n)
        assert sorted(kept.wait_for(6)) == list(range(6))
        assert stays(lambda: len(closed.handled) == 3, 0.5)
        # What the closed subscriber missed waits for its group.
        rest = pull_n(bus, topic, 3, group="closed")
        for message in rest:
            message.ack()
        assert sorted(m.data for m in rest) == [3, 4, 5]

    def test_closing_one_of_two_competing_subscribers_leaves_the_other_working(
        self, bus: PubSub, topic: str
    ) -> None:
        first, second = Inbox(), Inbox()
        bus.subscribe(topic, first, group="workers", batch=1)
        leaving = bus.subscribe(topic, second, group="workers", batch=1)
        declare(bus, topic, "workers")
        leaving.close()
        for n in range(5):
            bus.publish(topic, n)
        assert sorted(first.wait_for(5)) == list(range(5))
        assert second.handled == []

    # --- at-least-once --------------------------------------------------------------------------

    def test_at_least_once_with_a_failing_handler(self, bus: PubSub, topic: str) -> None:
        # Fails the first two calls and every fifth: everything is still handled in the end.
        inbox = Inbox(fail=lambda message, call: call <= 2 or call % 5 == 0)
        bus.subscribe(topic, inbox, group="g", retry_delay=0.01)
        declare(bus, topic, "g")
        total = 30
        for n in range(total):
            bus.publish(topic, {"seq": n})
        wait_until(lambda: {d["seq"] for d in inbox.data} == set(range(total)), timeout=15)
        assert inbox.calls > total
        retried = [m for m in inbox.handled if m.attempt > 1]
        assert retried, "failed messages come back with a higher attempt number"

    def test_handler_results_retry_and_drop(self, bus: PubSub, topic: str) -> None:
        seen: list[tuple[Any, int]] = []

        def handler(message: Message) -> HandlerResult | bool:
            seen.append((message.data, message.attempt))
            if message.data == "retry-once" and message.attempt == 1:
                return False  # False means retry
            if message.data == "drop":
                return HandlerResult.DROP
            return True

        dead = Inbox()
        bus.subscribe(f"{topic}-dead", dead, group="g")
        bus.subscribe(topic, handler, group="g", dead_letter_topic=f"{topic}-dead",
                      retry_delay=0.01)
        declare(bus, topic, "g")
        bus.publish(topic, "retry-once")
        bus.publish(topic, "drop")
        assert dead.wait_for(1) == ["drop"]
        wait_until(lambda: ("retry-once", 2) in seen)
        assert stays(lambda: len(seen) == 3, 0.3)
        assert dead.handled[0].metadata["capa-original-topic"] == topic

    def test_subscription_dead_letters_after_max_attempts(
        self, bus: PubSub, topic: str
    ) -> None:
        attempts: list[int] = []

        def always_fails(message: Message) -> None:
            attempts.append(message.attempt)
            raise RuntimeError("poison")

        dead = Inbox()
        bus.subscribe(f"{topic}-dead", dead, group="g")
        bus.subscribe(topic, always_fails, group="g", max_attempts=3,
                      dead_letter_topic=f"{topic}-dead", retry_delay=0.01)
        declare(bus, topic, "g")
        bus.publish(topic, {"poison": True})
        assert dead.wait_for(1) == [{"poison": True}]
        assert attempts == [1, 2, 3]
        assert "3 attempts" in dead.handled[0].metadata["capa-dead-letter-reason"]

    # --- pull, ack, nack ------------------------------------------------------------------------

    def test_pull_honours_max_messages(self, bus: PubSub, topic: str) -> None:
        declare(bus, topic, "g")
        for n in range(5):
            bus.publish(topic, n)
        batch = bus.pull(topic, group="g", max_messages=2, timeout=2.0)
        assert 1 <= len(batch) <= 2
        rest = pull_n(bus, topic, 5 - len(batch))
        for message in batch + rest:
            message.ack()
        assert sorted(m.data for m in batch + rest) == list(range(5))

    def test_pull_waits_up_to_its_timeout(self, bus: PubSub, topic: str) -> None:
        declare(bus, topic, "g")
        started = time.monotonic()
        assert bus.pull(topic, group="g", timeout=0.3) == []
        assert 0.25 <= time.monotonic() - started < 2.0

    def test_pull_returns_as_soon_as_a_message_arrives(self, bus: PubSub, topic: str) -> None:
        declare(bus, topic, "g")
        timer = threading.Timer(0.2, bus.publish, (topic, "late"))
        timer.start()
        started = time.monotonic()
        try:
            messages = bus.pull(topic, group="g", timeout=5.0)
        finally:
            timer.join()
        assert [m.data for m in messages] == ["late"]
        assert time.monotonic() - started < 2.0
        messages[0].ack()

    def test_acked_messages_do_not_come_back(
        self, make_runtime: RuntimeFactory, topic: str
    ) -> None:
        bus = make_runtime(lease=1).pubsub(COMPONENT)
        declare(bus, topic, "g")
        bus.publish(topic, "once")
        [message] = pull_n(bus, topic, 1)
        message.ack()
        message.ack()  # a second ack is harmless
        assert bus.pull(topic, group="g", timeout=1.5) == []

    def test_nack_requeues_with_a_higher_attempt(self, bus: PubSub, topic: str) -> None:
        declare(bus, topic, "g")
        bus.publish(topic, {"n": 1})
        [first] = pull_n(bus, topic, 1)
        first.nack(delay=0)
        [again] = pull_n(bus, topic, 1)
        assert (again.data, again.id, again.attempt) == ({"n": 1}, first.id, 2)
        again.ack()
        assert bus.pull(topic, group="g", timeout=0.2) == []

    def test_nack_with_delay_holds_the_message_back(self, bus: PubSub, topic: str) -> None:
        declare(bus, topic, "g")
        bus.publish(topic, "later")
        [first] = pull_n(bus, topic, 1)
        nacked_at = time.monotonic()
        first.nack(delay=0.8)
        assert bus.pull(topic, group="g", timeout=0.2) == []
        [again] = pull_n(bus, topic, 1)
        assert time.monotonic() - nacked_at >= 0.7
        assert again.attempt == 2
        again.ack()

    def test_nack_without_requeue_dead_letters(self, bus: PubSub, topic: str) -> None:
        dead_topic = f"{topic}-dead"
        declare(bus, topic, "g")
        bus.publish(topic, {"bad": 1})
        [message] = bus.pull(topic, group="g", timeout=5, dead_letter_topic=dead_topic)
        message.nack(requeue=False)
        [dead] = pull_n(bus, dead_topic, 1)
        dead.ack()
        assert dead.data == {"bad": 1}
        assert dead.metadata["capa-original-topic"] == topic
        assert dead.metadata["capa-dead-letter-reason"]
        assert bus.pull(topic, group="g", timeout=0.2) == []

    def test_nack_without_requeue_and_without_dead_letter_topic_drops(
        self, bus: PubSub, topic: str
    ) -> None:
        declare(bus, topic, "g")
        bus.publish(topic, "dropped")
        [message] = pull_n(bus, topic, 1)
        message.nack(requeue=False)
        assert bus.pull(topic, group="g", timeout=0.3) == []

    def test_max_attempts_then_dead_letter(self, bus: PubSub, topic: str) -> None:
        dead_topic = f"{topic}-dead"
        options: dict[str, Any] = {"max_attempts": 2, "dead_letter_topic": dead_topic}
        declare(bus, topic, "g")
        bus.publish(topic, "poison")
        [first] = pull_n(bus, topic, 1, **options)
        first.nack(delay=0)
        [second] = pull_n(bus, topic, 1, **options)
        assert second.attempt == 2
        second.nack(delay=0)
        [dead] = pull_n(bus, dead_topic, 1)
        dead.ack()
        assert dead.data == "poison"
        assert bus.pull(topic, group="g", timeout=0.2, **options) == []

    def test_pull_arguments_are_checked(self, bus: PubSub, topic: str) -> None:
        with pytest.raises(ValueError):
            bus.pull("", group="g", timeout=0)
        with pytest.raises(ValueError):
            bus.pull(topic, group="", timeout=0)
        with pytest.raises(ValueError):
            bus.pull(topic, group="g", timeout=0, max_attempts=0)

    # --- leases ---------------------------------------------------------------------------------

    def test_lease_expiry_hands_the_message_to_another_puller(
        self, make_runtime: RuntimeFactory, topic: str
    ) -> None:
        dying = make_runtime(lease=1)
        bus = dying.pubsub(COMPONENT)
        declare(bus, topic, "g")
        bus.publish(topic, "work")
        [taken] = pull_n(bus, topic, 1)
        dying.close()  # the consumer dies holding the message: nobody renews its lease
        survivor = make_runtime(lease=1).pubsub(COMPONENT)
        started = time.monotonic()
        [again] = pull_n(survivor, topic, 1, timeout=5)
        assert time.monotonic() - started < 3.0
        assert (again.data, again.id, again.attempt) == ("work", taken.id, 2)
        again.ack()

    def test_a_message_redelivered_past_max_attempts_is_dead_lettered(
        self, make_runtime: RuntimeFactory, topic: str
    ) -> None:
        options: dict[str, Any] = {"max_attempts": 1, "dead_letter_topic": f"{topic}-dead"}
        dying = make_runtime(lease=1)
        bus = dying.pubsub(COMPONENT)
        declare(bus, topic, "g")
        bus.publish(topic, "poison")
        pull_n(bus, topic, 1, **options)
        dying.close()
        survivor = make_runtime(lease=1).pubsub(COMPONENT)
        # The next pull finds it over its attempts: dead-lettered instead of handed out.
        assert survivor.pull(topic, group="g", timeout=3, **options) == []
        [dead] = pull_n(survivor, f"{topic}-dead", 1)
        dead.ack()
        assert dead.data == "poison"
        assert "unacked" in dead.metadata["capa-dead-letter-reason"]
        assert survivor.pull(topic, group="g", timeout=0.2, **options) == []

    def test_a_live_consumer_keeps_its_lease_however_long_the_work(
        self, make_runtime: RuntimeFactory, topic: str
    ) -> None:
        handled: list[Any] = []
        working = threading.Event()

        def handler(message: Message) -> None:
            if message.data == "slow":
                working.set()
                time.sleep(2.5)  # well past the 1 s lease
            handled.append(message.data)

        worker = make_runtime(lease=1).pubsub(COMPONENT)
        worker.subscribe(topic, handler, group="g", batch=1)
        declare(worker, topic, "g")
        worker.publish(topic, "warm-up")  # a quick one first: renewal must survive idle spells
        wait_until(lambda: handled == ["warm-up"])
        worker.publish(topic, "slow")
        assert working.wait(5)
        other = make_runtime(lease=1).pubsub(COMPONENT)
        stolen = other.pull(topic, group="g", timeout=2.0)
        for message in stolen:
            message.ack()
        assert [m.data for m in stolen] == [], "a message in the works was handed out again"
        wait_until(lambda: handled == ["warm-up", "slow"], timeout=5)

    def test_a_delivery_held_with_its_own_shorter_lease_is_renewed_in_time(
        self, make_runtime: RuntimeFactory, topic: str
    ) -> None:
        # As the kombu transport does: pull deliveries with a lease (visibility timeout) of
        # its own, shorter than the client's, and hand them to the lease keeper.
        bus = make_runtime(lease=30).pubsub(COMPONENT)
        declare(bus, topic, "g")
        bus.publish(topic, "warm-up")
        [warm] = pull_n(bus, topic, 1)
        warm.ack()  # the keeper now sleeps a third of the client's 30 s lease
        bus.publish(topic, "short")
        deliveries: list[Any] = []
        deadline = time.monotonic() + 5
        while not deliveries and time.monotonic() < deadline:
            deliveries = bus.pull_deliveries(topic, "g", 1, 1.0, 1.0)
        [delivery] = deliveries
        bus.lease_keeper.hold(topic, "g", delivery.id, 1.0)
        other = make_runtime(lease=30).pubsub(COMPONENT)
        stolen = other.pull(topic, group="g", timeout=2.0)
        for message in stolen:
            message.ack()
        bus.lease_keeper.release(topic, "g", delivery.id)
        bus.ack_deliveries(topic, "g", [delivery.id])
        assert stolen == [], "the keeper slept through a 1 s lease"

    def test_a_nack_racing_a_lease_renewal_wins(
        self, make_runtime: RuntimeFactory, topic: str
    ) -> None:
        runtime = make_runtime(lease=1)
        renewing = threading.Event()

        class SlowRenewal:
            """Holds every lease renewal up, so a nack lands while one is in flight."""

            def intercept(self, call: Any, proceed: Callable[[], Any]) -> Any:
                if call.operation == "extend":
                    renewing.set()
                    time.sleep(0.2)
                return proceed()

        runtime.dispatcher.add_interceptor(SlowRenewal())
        bus = runtime.pubsub(COMPONENT)
        declare(bus, topic, "g")
        bus.publish(topic, "x")
        [message] = pull_n(bus, topic, 1)
        assert renewing.wait(3)
        message.nack(delay=0.3)
        # A renewal finishing after the nack would hide the message for another whole lease.
        [again] = pull_n(bus, topic, 1, timeout=0.9)
        assert again.attempt == 2
        again.ack()

    def test_a_pulled_message_in_a_live_process_is_not_handed_out_again(
        self, make_runtime: RuntimeFactory, topic: str
    ) -> None:
        holder = make_runtime(lease=1).pubsub(COMPONENT)
        other = make_runtime(lease=1).pubsub(COMPONENT)
        declare(holder, topic, "g")
        holder.publish(topic, "mine")
        [message] = pull_n(holder, topic, 1)
        assert other.pull(topic, group="g", timeout=1.8) == []
        message.ack()

    # --- bulk publish ---------------------------------------------------------------------------

    def test_bulk_publish(self, bus: PubSub, topic: str) -> None:
        inbox = Inbox()
        bus.subscribe(topic, inbox, group="g")
        declare(bus, topic, "g")
        bus.bulk_publish(topic, [{"n": n} for n in range(10)])
        bus.bulk_publish(topic, {"a": "first", "b": b"second"})
        bus.bulk_publish(topic, [b"raw-1", b"raw-2"], raw=True)
        bus.bulk_publish(topic, [])
        data = inbox.wait_for(14)
        assert stays(lambda: len(inbox.handled) == 14, 0.3)
        assert Counter(map(repr, data)) == Counter(
            map(repr, [{"n": n} for n in range(10)] + ["first", b"second", b"raw-1", b"raw-2"])
        )
        ids = {m.id for m in inbox.handled}
        assert len(ids) == 14

    # --- optional primitives --------------------------------------------------------------------

    def test_purge_drops_waiting_messages_or_is_refused(self, bus: PubSub, topic: str) -> None:
        declare(bus, topic, "g")
        for n in range(3):
            bus.publish(topic, n)
        try:
            purged = bus.purge(topic, group="g")
        except UnsupportedFeature as exc:
            assert exc.feature == "purge"
            return
        assert purged == 3
        assert bus.pull(topic, group="g", timeout=0.2) == []

    def test_backlog_counts_what_waits_for_a_group_or_is_refused(
        self, bus: PubSub, topic: str
    ) -> None:
        declare(bus, topic, "g")
        declare(bus, topic, "other")
        try:
            assert bus.backlog(topic, group="g") == 0
        except UnsupportedFeature as exc:
            assert exc.feature == "backlog"
            return
        for n in range(5):
            bus.publish(topic, n)

        def settles_at(expected: int, group: str = "g") -> int:
            # A publisher that does not wait for the broker (publisherConfirm false) returns
            # before the message is counted; every other component counts it at once.
            return int(settled(lambda: bus.backlog(topic, group=group), expected))

        assert settles_at(5) == 5
        held = pull_n(bus, topic, 2, group="g")
        assert settles_at(3) == 3  # the two in hand no longer wait
        assert settles_at(5, "other") == 5  # every group has its own copy
        for message in held:
            message.ack()
        assert settles_at(3) == 3
        assert bus.purge(topic, group="g") == 3
        assert settles_at(0) == 0

    def test_delete_group_drops_it_and_what_waits_for_it_or_is_refused(
        self, bus: PubSub, topic: str
    ) -> None:
        declare(bus, topic, "gone")
        declare(bus, topic, "kept")
        bus.publish(topic, 1)
        [held] = pull_n(bus, topic, 1, group="gone")  # one in hand when the group goes
        bus.publish(topic, 2)
        try:
            bus.delete_group(topic, group="gone")
        except UnsupportedFeature as exc:
            assert exc.feature == "delete_group"
            return
        held.ack()  # harmless: its group is gone
        bus.publish(topic, 3)
        kept = pull_n(bus, topic, 3, group="kept")
        for message in kept:
            message.ack()
        assert sorted(m.data for m in kept) == [1, 2, 3]  # the other group lost nothing
        # Declared again, the group starts empty: nothing of before, everything after.
        declare(bus, topic, "gone")
        bus.publish(topic, 4)
        [again] = pull_n(bus, topic, 1, group="gone")
        again.ack()
        assert again.data == 4
        assert bus.pull(topic, group="gone", timeout=0.3) == []
