"""The pub/sub API: CloudEvents publishing, push subscriptions and explicit-ack pulls."""

from __future__ import annotations

import base64
import datetime
import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .codec import Codec, JsonCodec
from .dispatch import Dispatcher, MessageTracing
from .errors import PublishError
from .spi import PubSubComponent
from .types import Delivery, HandlerResult

log = logging.getLogger("capa_core.pubsub")

CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"
CONTENT_TYPE = "content-type"
DEFAULT_LEASE = 20.0  # seconds; a dead consumer's messages come back within this
DEFAULT_GROUP = "default"

Handler = Callable[["Message"], "HandlerResult | bool | None"]


@dataclass(slots=True)
class Message:
    """A received message. Pulled messages must be acked or nacked; subscriptions do it for you."""

    id: str
    topic: str
    data: Any
    attempt: int
    metadata: Mapping[str, str]
    event: Mapping[str, Any] = field(default_factory=dict)  # CloudEvent attributes, no data
    _consumer: _Consumer | None = field(default=None, repr=False)
    _delivery: Delivery | None = field(default=None, repr=False)
    _settled: bool = field(default=False, repr=False)

    @property
    def carrier(self) -> Mapping[str, Any]:
        """Where the publisher's trace context travels: the CloudEvent, or raw headers."""
        return self.event or self.metadata

    def ack(self) -> None:
        """Done: the message will not be delivered again."""
        if self._consumer is not None and not self._settled:
            self._settled = True
            self._consumer.ack(self)

    def nack(self, requeue: bool = True, delay: float | None = None) -> None:
        """Failed: deliver it again after ``delay`` (or dead-letter / drop if not ``requeue``)."""
        if self._consumer is not None and not self._settled:
            self._settled = True
            self._consumer.nack(self, requeue=requeue, delay=delay)


class _LeaseKeeper:
    """Extends the leases of deliveries a live process is still working on, however long."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub
        self._held: dict[tuple[str, str], dict[str, float]] = {}
        self._lock = threading.Lock()
        # Held for a whole renewal round: a release (before an ack or nack) waits for a renewal
        # in flight, which would otherwise land after a nack and hide the message a whole lease.
        self._renewing = threading.Lock()
        self._wake = threading.Event()
        self._interval = float("inf")  # how long the keeper sleeps now, under self._lock
        self._thread: threading.Thread | None = None
        self._closed = False

    def hold(self, topic: str, group: str, delivery_id: str, lease: float) -> None:
        with self._lock:
            self._held.setdefault((topic, group), {})[delivery_id] = lease
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"capa-lease-{self._pubsub.name}", daemon=True
                )
                self._thread.start()
            elif lease / 3 < self._interval:
                self._wake.set()  # asleep for longer than this lease lasts: renew now

    def release(self, topic: str, group: str, delivery_id: str) -> None:
        with self._renewing, self._lock:
            held = self._held.get((topic, group))
            if held is not None:
                held.pop(delivery_id, None)

    def _run(self) -> None:
        while not self._closed:
            with self._renewing:
                with self._lock:
                    snapshot = {tg: dict(ids) for tg, ids in self._held.items() if ids}
                for (topic, group), ids in snapshot.items():
                    try:
                        self._pubsub.extend(topic, group, list(ids), max(ids.values()))
                    except Exception:  # a missed renewal is retried next round; never crash
                        log.exception("could not extend leases on %s/%s", topic, group)
            # Sleep a third of the shortest lease held now (idle: of the client's lease); a
            # hold with a shorter lease meanwhile wakes the keeper early.
            with self._lock:
                self._interval = min(
                    (min(ids.values()) for ids in self._held.values() if ids),
                    default=self._pubsub.lease,
                ) / 3
            self._wake.wait(self._interval)
            self._wake.clear()

    def close(self) -> None:
        self._closed = True
        self._wake.set()


class _Consumer:
    """Acknowledges, retries and dead-letters the messages of one (topic, group)."""

    def __init__(
        self,
        pubsub: PubSub,
        topic: str,
        group: str,
        *,
        lease: float,
        max_attempts: int | None,
        dead_letter_topic: str | None,
        retry_delay: float,
    ) -> None:
        if dead_letter_topic is not None and max_attempts is None:
            max_attempts = 5
        if max_attempts is not None and max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.pubsub, self.topic, self.group = pubsub, topic, group
        self.lease, self.max_attempts = lease, max_attempts
        self.dead_letter_topic = dead_letter_topic
        self.retry_delay = retry_delay
        pubsub.ensure_group(topic, group)
        if dead_letter_topic is not None:
            pubsub.ensure_group(dead_letter_topic, group)

    def pull(self, max_messages: int, timeout: float) -> list[Message]:
        deliveries = self.pubsub.pull_deliveries(
            self.topic, self.group, max_messages, timeout, self.lease
        )
        messages = []
        for delivery in deliveries:
            if self.max_attempts is not None and delivery.attempt > self.max_attempts:
                # Its last consumer died holding it: do not hand out a poison message again.
                self._dead_letter(delivery, f"delivered {delivery.attempt - 1} times unacked")
                continue
            self.pubsub.lease_keeper.hold(self.topic, self.group, delivery.id, self.lease)
            messages.append(self.pubsub.decode(self.topic, delivery, self))
        return messages

    def receive(self, max_messages: int, timeout: float) -> list[Message]:
        """Pull for an application: each message gets a receive span in its publisher's trace."""
        messages = self.pull(max_messages, timeout)
        tracing = self.pubsub.tracing
        if tracing is not None:
            for message in messages:
                with tracing.process(self.pubsub.component, self.topic, self.group,
                                     message.carrier):
                    pass
        return messages

    def ack(self, message: Message) -> None:
        assert message._delivery is not None
        self.pubsub.lease_keeper.release(self.topic, self.group, message._delivery.id)
        self.pubsub.ack_deliveries(self.topic, self.group, [message._delivery.id])

    def nack(self, message: Message, *, requeue: bool, delay: float | None) -> None:
        delivery = message._delivery
        assert delivery is not None
        self.pubsub.lease_keeper.release(self.topic, self.group, delivery.id)
        if not requeue:
            self._dead_letter(delivery, "dropped by its handler")
        elif self.max_attempts is not None and delivery.attempt >= self.max_attempts:
            self._dead_letter(delivery, f"failed {delivery.attempt} attempts")
        else:
            if delay is None:
                delay = min(self.retry_delay * 2 ** (delivery.attempt - 1), 60.0)
            self.pubsub.nack_deliveries(self.topic, self.group, [delivery.id], delay)

    def _dead_letter(self, delivery: Delivery, reason: str) -> None:
        if self.dead_letter_topic is None:
            log.warning(
                "dropping message %s of %s/%s (%s): no dead_letter_topic set",
                delivery.id, self.topic, self.group, reason,
            )
        else:
            metadata = {
                **delivery.metadata,
                "capa-dead-letter-reason": reason,
                "capa-original-topic": self.topic,
            }
            self.pubsub.publish_bytes(self.dead_letter_topic, delivery.data, metadata)
        self.pubsub.ack_deliveries(self.topic, self.group, [delivery.id])


def settle(message: Message, result: HandlerResult | bool | None) -> None:
    """Ack, retry or drop ``message`` as a handler's result says (None and True are success)."""
    if result is None or result is True or result is HandlerResult.SUCCESS:
        message.ack()
    elif result is HandlerResult.DROP:
        message.nack(requeue=False)
    else:
        message.nack()


class Subscription:
    """Push delivery to a handler on background threads until ``close()``."""

    def __init__(
        self, consumer: _Consumer, handler: Handler, *, concurrency: int, batch: int
    ) -> None:
        self._consumer = consumer
        self._handler = handler
        self._batch = batch
        self._stopped = threading.Event()
        self.topic, self.group = consumer.topic, consumer.group
        self._threads = [
            threading.Thread(
                target=self._run, name=f"capa-sub-{consumer.topic}-{n}", daemon=True
            )
            for n in range(concurrency)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def active(self) -> bool:
        return not self._stopped.is_set()

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                messages = self._consumer.pull(self._batch, timeout=0.5)
            except Exception:
                log.exception("pull from %s/%s failed; retrying", self.topic, self.group)
                self._stopped.wait(1.0)
                continue
            for message in messages:
                if self._stopped.is_set():
                    message.nack(delay=0)
                    continue
                self._handle(message)

    def _handle(self, message: Message) -> None:
        tracing = self._consumer.pubsub.tracing
        try:
            if tracing is None:
                result = self._handler(message)
            else:
                with tracing.process(
                    self._consumer.pubsub.component, self.topic, self.group, message.carrier
                ):
                    result = self._handler(message)
        except Exception:
            log.exception("handler of %s failed on message %s", self.topic, message.id)
            result = HandlerResult.RETRY
        try:
            settle(message, result)
        except Exception:
            # The middleware is unreachable (retries spent): keep the subscription alive; the
            # unsettled message comes back to a consumer when its lease runs out.
            log.exception("could not settle message %s of %s/%s", message.id, self.topic,
                          self.group)

    def close(self, timeout: float = 5.0) -> None:
        """Stop pulling; messages in hand are finished first, the rest stay for other consumers."""
        self._stopped.set()
        current = threading.current_thread()
        for thread in self._threads:
            if thread is not current:
                thread.join(timeout)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PubSub:
    """Publish to and consume from the topics of one pub/sub component."""

    def __init__(
        self,
        component: PubSubComponent,
        dispatcher: Dispatcher,
        codec: Codec,
        *,
        source: str = "capa",
        lease: float = DEFAULT_LEASE,
    ) -> None:
        self.component = component
        self.name = component.name
        self.codec = codec
        self.source = source
        self.lease = lease
        self._dispatcher = dispatcher
        self._call = dispatcher.call
        self._json = isinstance(codec, JsonCodec)
        self._envelope_codec = codec if self._json else JsonCodec()
        self._subscriptions: list[Subscription] = []
        self._consumers: dict[tuple[Any, ...], _Consumer] = {}
        self.lease_keeper = _LeaseKeeper(self)

    def ping(self) -> None:
        """Return when the component's middleware answers; ComponentUnavailable when it does not."""
        self._call(self.component, "ping", self.component.ping)

    # --- publishing -----------------------------------------------------------------------------

    def envelope(self, topic: str, data: Any, *, event_type: str | None = None) -> dict[str, Any]:
        """The CloudEvents 1.0 envelope ``publish`` sends for ``data``."""
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": self.source,
            "type": event_type or "com.capa.event.sent",
            "time": datetime.datetime.now(datetime.UTC).isoformat(),
            "topic": topic,
            "pubsubname": self.name,
        }
        if isinstance(data, bytes):
            event["datacontenttype"] = "application/octet-stream"
            event["data_base64"] = base64.b64encode(data).decode("ascii")
        elif self._json:
            event["datacontenttype"] = "application/json"
            event["data"] = data
        else:
            event["datacontenttype"] = self.codec.content_type
            event["data_base64"] = base64.b64encode(self.codec.encode(data)).decode("ascii")
        return event

    def _prepare(
        self, topic: str, data: Any, raw: bool, metadata: Mapping[str, str] | None,
        event_type: str | None,
    ) -> tuple[dict[str, Any] | bytes, dict[str, str]]:
        """The envelope (or raw body) and headers of a message, before trace context is added."""
        headers = dict(metadata or {})
        if not raw:
            headers[CONTENT_TYPE] = CLOUDEVENTS_CONTENT_TYPE
            return self.envelope(topic, data, event_type=event_type), headers
        if isinstance(data, bytes):
            headers[CONTENT_TYPE] = "application/octet-stream"
            return data, headers
        headers[CONTENT_TYPE] = self.codec.content_type
        return self.codec.encode(data), headers

    def _finish(
        self, payload: dict[str, Any] | bytes, headers: dict[str, str]
    ) -> tuple[bytes, dict[str, str]]:
        """Encode a prepared message. Runs inside the publish call, so the trace context it
        carries is that of the publish span."""
        tracing = self._dispatcher.tracing
        if isinstance(payload, dict):
            if tracing is not None:
                tracing.inject(payload)  # traceparent / tracestate as CloudEvents extensions
            return self._envelope_codec.encode(payload), headers
        if tracing is not None:
            tracing.inject(headers)
        return payload, headers

    def _send(self, topic: str, payload: dict[str, Any] | bytes, headers: dict[str, str]) -> None:
        self.component.publish(topic, *self._finish(payload, headers))

    def _send_many(
        self, topic: str, entries: list[tuple[str, dict[str, Any] | bytes, dict[str, str]]]
    ) -> dict[str, Exception]:
        finished = [(entry_id, *self._finish(p, h)) for entry_id, p, h in entries]
        return self.component.bulk_publish(topic, finished)

    def publish(
        self,
        topic: str,
        data: Any,
        *,
        metadata: Mapping[str, str] | None = None,
        raw: bool = False,
        event_type: str | None = None,
    ) -> None:
        """Send ``data`` to every group of ``topic``; returns once the backend has it.

        ``data`` goes in a CloudEvents 1.0 envelope; ``raw=True`` sends it alone (bytes as they
        are, other values through the codec). ``metadata`` travels as message headers.
        """
        payload, headers = self._prepare(topic, data, raw, metadata, event_type)
        self._call(
            self.component, "publish", self._send, topic, payload, headers,
            attributes={"topic": topic},
        )

    def publish_bytes(self, topic: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Send finished bytes as they are (used for dead letters and by shims)."""
        self._call(
            self.component, "publish", self._send, topic, body, dict(headers),
            attributes={"topic": topic},
        )

    def bulk_publish(
        self,
        topic: str,
        entries: Iterable[Any] | Mapping[str, Any],
        *,
        raw: bool = False,
    ) -> None:
        """Publish many messages; raises PublishError listing the entry ids that failed.

        ``entries`` is a mapping of entry id to data, or an iterable of data (ids "0", "1"...).
        """
        pairs = entries.items() if isinstance(entries, Mapping) else enumerate(entries)
        prepared = [
            (str(entry_id), *self._prepare(topic, data, raw, None, None))
            for entry_id, data in pairs
        ]
        failed = self._call(
            self.component, "bulk_publish", self._send_many, topic, prepared,
            attributes={"topic": topic},
        )
        if failed:
            raise PublishError(failed)

    # --- consuming ------------------------------------------------------------------------------

    def subscribe(
        self,
        topic: str,
        handler: Handler,
        *,
        group: str = DEFAULT_GROUP,
        dead_letter_topic: str | None = None,
        max_attempts: int | None = None,
        retry_delay: float = 0.2,
        concurrency: int = 1,
        batch: int = 10,
    ) -> Subscription:
        """Call ``handler`` for each message of ``topic`` in ``group`` until closed.

        The handler returns HandlerResult (or True/None for success, False for retry); an
        exception means retry. After ``max_attempts`` a message goes to ``dead_letter_topic``.
        """
        consumer = self._consumer(topic, group, max_attempts, dead_letter_topic, retry_delay)
        subscription = Subscription(consumer, handler, concurrency=concurrency, batch=batch)
        self._subscriptions.append(subscription)
        return subscription

    def pull(
        self,
        topic: str,
        *,
        group: str = DEFAULT_GROUP,
        max_messages: int = 10,
        timeout: float = 1.0,
        dead_letter_topic: str | None = None,
        max_attempts: int | None = None,
        retry_delay: float = 0.2,
    ) -> list[Message]:
        """Up to ``max_messages`` leased messages; each must be acked or nacked."""
        consumer = self._consumer(topic, group, max_attempts, dead_letter_topic, retry_delay)
        return consumer.receive(max_messages, timeout)

    def _consumer(
        self, topic: str, group: str, max_attempts: int | None, dead_letter_topic: str | None,
        retry_delay: float,
    ) -> _Consumer:
        # One consumer per set of options: its groups are declared once, not on every pull.
        key = (topic, group, max_attempts, dead_letter_topic, retry_delay, self.lease)
        consumer = self._consumers.get(key)
        if consumer is None:
            if not topic or not group:
                raise ValueError("topic and group must be non-empty strings")
            consumer = self._consumers[key] = _Consumer(
                self, topic, group, lease=self.lease, max_attempts=max_attempts,
                dead_letter_topic=dead_letter_topic, retry_delay=retry_delay,
            )
        return consumer

    def decode(self, topic: str, delivery: Delivery, consumer: _Consumer | None) -> Message:
        """Turn a delivery into a Message, unwrapping a CloudEvent envelope."""
        content_type = delivery.metadata.get(CONTENT_TYPE, "")
        event: dict[str, Any] = {}
        if content_type == CLOUDEVENTS_CONTENT_TYPE:
            event = self._envelope_codec.decode(delivery.data)
            if "data_base64" in event:
                payload = base64.b64decode(event.pop("data_base64"))
                is_bytes = event.get("datacontenttype") == "application/octet-stream"
                data = payload if is_bytes else self.codec.decode(payload)
            else:
                data = event.pop("data", None)
            message_id = str(event.get("id", delivery.id))
        elif content_type == "application/octet-stream":
            data, message_id = delivery.data, delivery.id
        else:
            data, message_id = self.codec.decode(delivery.data), delivery.id
        return Message(
            message_id, topic, data, delivery.attempt, delivery.metadata, event,
            consumer, delivery,
        )

    @property
    def tracing(self) -> MessageTracing | None:
        return self._dispatcher.tracing

    # --- dispatched component calls (shared by consumers and the lease keeper) -------------------

    def ensure_group(self, topic: str, group: str) -> None:
        self._call(self.component, "ensure_group", self.component.ensure_group, topic, group)

    def pull_deliveries(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        return self._call(
            self.component, "pull", self.component.pull, topic, group, max_messages, timeout,
            lease, attributes={"topic": topic, "group": group},
        )

    def ack_deliveries(self, topic: str, group: str, ids: list[str]) -> None:
        self._call(self.component, "ack", self.component.ack, topic, group, ids)

    def nack_deliveries(self, topic: str, group: str, ids: list[str], delay: float) -> None:
        self._call(self.component, "nack", self.component.nack, topic, group, ids, delay)

    def extend(self, topic: str, group: str, ids: list[str], lease: float) -> None:
        self._call(self.component, "extend", self.component.extend, topic, group, ids, lease)

    def purge(self, topic: str, *, group: str = DEFAULT_GROUP) -> int:
        return self._call(self.component, "purge", self.component.purge, topic, group)

    def backlog(self, topic: str, *, group: str = DEFAULT_GROUP) -> int:
        """How many messages wait for ``group``, never handed to a consumer (see the SPI)."""
        return self._call(self.component, "backlog", self.component.backlog, topic, group)

    def delete_group(self, topic: str, *, group: str = DEFAULT_GROUP) -> None:
        """Remove ``group`` of ``topic`` with the messages waiting for it (a queue delete)."""
        self._call(self.component, "delete_group", self.component.delete_group, topic, group)

    def close(self) -> None:
        # Signal every subscription before waiting for any, so their last pulls end together.
        for subscription in self._subscriptions:
            subscription._stopped.set()
        for subscription in self._subscriptions:
            subscription.close()
        self._subscriptions.clear()
        self.lease_keeper.close()
