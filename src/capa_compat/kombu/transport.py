"""A kombu virtual transport whose queues are capa pub/sub topics and consumer groups.

URLs: ``capa://NAME`` uses the pub/sub component NAME of the working directory's capa settings
(``capa://`` alone: the embedded default); ``capa+<legacy url>`` (``capa+redis://...``,
``capa+amqp://...``, ``capa+sqlite:///x.db``) builds the matching component from that URL.

Mapping (every queue is consumed in a consumer group named after the queue, so consumers of one
queue compete, and each queue bound to an exchange gets its own copy):

- queue Q: topic ``<prefix>Q``; priority queues (``x-max-priority``) add one topic per priority
  band, ``<prefix>Q.p3`` / ``.p6`` / ``.p9``, higher numbers first (AMQP's order);
- direct exchange E: a publisher that knows the binding (it declared the queue, as Celery does)
  puts straight on the queue's topic; otherwise on ``<prefix>exchange/E/<routing key>``, where each
  queue bound with that key has a group. The usual binding of queue Q to exchange Q with key Q
  (Celery's queues, SimpleQueue) needs no route topic: a message for exchange Q with key Q goes to
  queue Q's topic even from a process that never declared the binding;
- fanout and topic exchange E: one topic ``<prefix>exchange/E``, a group per bound queue; topic
  patterns are matched by the consuming side.

Consuming: one thread per connection pulls the consumed queues' messages ahead of delivery, never
more than a channel's prefetch (``basic_qos``) in hand. ``drain_events`` delivers what it
fetched; on an event loop (Celery's worker registers one) a pipe wakes the loop instead.

Acknowledgement is capa's lease: a pulled message stays leased to this process (the client layer
keeps extending the lease while it is held, however long a task runs); ack settles it, reject with
requeue hands it back at once, and a process that dies without settling has its messages handed
out again when the lease runs out. A message delivered more than ``max_attempts`` times, or
rejected without requeue, goes to the topic of queue ``Q.dead``.

Limits: a message's ``expiration`` (AMQP's per-message TTL) is kept but not enforced, as by
kombu's Redis transport: a consumer still gets the message, and Celery marks an expired task
REVOKED when it sees it. Queue sizes (``qsize``, the message count of ``queue_declare``) count
what waits in the queue's groups (capa's backlog), not what a consumer fetched ahead; on a
component that cannot count they read 0. Deleting a queue removes its groups (with what
waits in them), and so does cancelling the last consumer in this process of a queue declared
auto-delete (``celery events``, ``celery inspect`` replies, a worker's control queue); a process
killed before that leaves the group behind.

Transport options: ``topic_prefix`` (""), ``visibility_timeout`` (the lease, seconds; default the
component's), ``max_attempts`` (5; 0 = unbounded), ``dead_letter_suffix`` (".dead"),
``prefetch_limit`` (messages fetched ahead when a consumer sets no prefetch, 100). With a legacy
``amqp://`` URL, ``confirm_publish`` and ``queue_type`` (default "classic") set the RabbitMQ
component as kombu's py-amqp transport behaves (capa_compat/kombu/runtimes.py).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import os
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from queue import Empty
from typing import Any, NamedTuple

from kombu.transport import virtual
from kombu.transport.base import to_rabbitmq_queue_arguments

from capa_core import (
    CapaError,
    ComponentNotFound,
    ComponentUnavailable,
    PubSub,
    UnsupportedFeature,
)
from capa_core.types import Delivery

from . import runtimes

log = logging.getLogger("capa_compat.kombu")

CONTENT_TYPE = "application/x-kombu+json"
PRIORITY_STEPS = (0, 3, 6, 9)
_SWEEP_EVERY = 0.2  # seconds between looks at a quiet topic while another is waited on
_BLOCK = 1.0  # longest blocking pull; also how long a stopped fetcher may linger
_BATCH = 16
_GET_WAIT = 0.05  # basic_get's longest wait for a message just published
_HANDOVER_WAIT = 0.002  # how long a fetcher may wait for the event loop to take a batch

ACK, REQUEUE, DEAD = "ack", "requeue", "dead"


def _identity(exchange: str, routing_key: str, queue: str) -> bool:
    """Queue Q bound to direct exchange Q with key Q: messages reach it by name, no route topic."""
    return exchange == routing_key == queue


class Source(NamedTuple):
    """One topic a queue receives from."""

    topic: str
    priority: int  # band: higher is served first
    exchange: str | None = None  # fanout/topic exchange whose routing keys must be matched


class _Held(NamedTuple):
    channel: Channel
    topic: str
    group: str
    delivery_id: str
    attempt: int
    data: bytes


class BrokerState(virtual.BrokerState):
    """Exchanges and bindings as kombu keeps them, plus what this process set up in capa."""

    def __init__(self) -> None:
        super().__init__()
        self.priorities: dict[str, int] = {}  # queue -> x-max-priority
        self.ensured: set[tuple[str, str]] = set()
        self.auto_delete: set[str] = set()  # queues to delete when their last consumer goes


class QoS(virtual.QoS):
    """Prefetch accounting as kombu does it; acks and rejects settle the capa delivery."""

    def ack(self, delivery_tag: str) -> None:
        self.channel.settle(delivery_tag, ACK)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.channel.settle(delivery_tag, REQUEUE if requeue else DEAD)
        self._quick_ack(delivery_tag)

    def restore_unacked(self) -> list[Any]:
        """Hand every delivered, unsettled message back to its queue (channel close, recover)."""
        self._flush()
        for tag in list(self._delivered):
            self.channel.settle(tag, REQUEUE, count_attempt=False)
        self._delivered.clear()
        return []


class _Room:
    """Changes to the prefetch room of a connection's channels, or to what they consume, as a
    version number the fetcher waits on (so a change between its look and its wait counts)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.version = 0

    def changed(self) -> None:
        with self.lock:
            self.changed_locked()

    def changed_locked(self) -> None:
        self.version += 1
        self.lock.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self.lock:
            self.lock.wait_for(lambda: self.version != seen, timeout)


class _Consumed(NamedTuple):
    """A topic that a queue consumed on a channel receives from."""

    channel: Channel
    queue: str
    source: Source


class _Fetcher:
    """Pulls the messages of the queues consumed on a connection ahead of delivery, within
    each channel's prefetch.

    One thread per connection, so one thread drives the component (a Celery worker consumes
    its tasks and its remote control on two channels: a thread each handed every pull of one
    over to the other, which ran the component's event loop). Every round it looks, without
    waiting, at each topic that is due (highest priority band first, then round robin so busy
    queues share the budget); when none has anything it waits on the topic that last had
    messages. A quiet topic is looked at again after ``_SWEEP_EVERY``: that bounds the extra
    latency of the less busy queues.
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.stopped = threading.Event()
        self.pulling: str | None = None  # the queue a pull is under way for
        self.pulled = threading.Condition()
        self.thread = threading.Thread(
            target=self._run, name=f"capa-kombu-fetcher-{id(transport):x}", daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.transport.room.changed()

    def fetch(self, consumed: _Consumed, n: int, timeout: float) -> bool:
        """Pull up to ``n`` messages of a consumed topic and buffer them; whether any came.

        A queue no longer consumed is not pulled; what a pull under way when its consumer was
        cancelled gets is handed back before wait_out() returns.
        """
        channel, queue = consumed.channel, consumed.queue
        with self.pulled:
            if queue not in channel._active_queues:
                return False
            self.pulling = queue
        try:
            deliveries = channel.pull(consumed.source, queue, n, timeout)
            channel.accept(queue, consumed.source, deliveries, fetcher=self)
            return bool(deliveries)
        finally:
            with self.pulled:
                self.pulling = None
                self.pulled.notify_all()

    def wait_out(self, queue: str) -> None:
        """Return once no pull of ``queue`` is under way (one may take up to ``_BLOCK``)."""
        with self.pulled:
            self.pulled.wait_for(lambda: self.pulling != queue, timeout=_BLOCK * 2)

    def _due(self) -> tuple[list[_Consumed], dict[Channel, int], bool]:
        """What the open channels with room in their prefetch consume, that room, and whether
        a channel that consumes has none."""
        consumed: list[_Consumed] = []
        room: dict[Channel, int] = {}
        full = False
        for channel in list(self.transport.channels):
            if channel.closed or not channel._active_queues:
                continue
            if (n := channel.free()) <= 0:
                full = True
                continue
            room[channel] = n
            consumed += channel.consumed_sources()
        return consumed, room, full

    @staticmethod
    def _first_hot(candidates: list[_Consumed]) -> _Consumed:
        """The topic to wait on before any has had messages: a plain queue's own (a worker's
        tasks), else an exchange's (a queue bound to a fanout/topic exchange mostly receives
        from it: events, remote control)."""
        bound = {(c.channel, c.queue) for c in candidates if c.source.exchange is not None}
        plain = (
            c for c in candidates
            if c.source.priority == 0 and (c.channel, c.queue) not in bound
        )
        via_exchange = (c for c in candidates if c.source.exchange is not None)
        return next(plain, next(via_exchange, candidates[0]))

    def _run(self) -> None:
        room_changed = self.transport.room
        next_look: dict[_Consumed, float] = {}
        hot: _Consumed | None = None
        turn = 0
        while not self.stopped.is_set():
            try:
                seen = room_changed.version
                candidates, room, full = self._due()
                if not candidates:  # nothing consumed, or every prefetch is full
                    room_changed.wait(seen, 0.5)
                    continue
                if hot is None or (hot not in candidates and not full):
                    # (A full channel keeps its hot topic: it is served again once acks come.)
                    hot = self._first_hot(candidates)
                turn = (turn + 1) % len(candidates)
                rotated = candidates[turn:] + candidates[:turn]
                rotated.sort(key=lambda c: -c.source.priority)  # stable: bands, then turns
                now = time.monotonic()
                got = None
                for consumed in rotated:
                    if consumed == hot or next_look.get(consumed, 0.0) > now:
                        continue  # (the hot topic gets the waiting pull below)
                    if self.fetch(consumed, room[consumed.channel], 0.0):
                        got = consumed
                        break
                    next_look[consumed] = now + _SWEEP_EVERY
                if got is None and full:
                    # A pull cannot be interrupted: wait for room instead (an ack), looking
                    # at the other channels' topics between waits.
                    room_changed.wait(seen, _SWEEP_EVERY)
                elif got is None:
                    wait = _BLOCK if len(candidates) == 1 else _SWEEP_EVERY
                    if self.fetch(hot, room[hot.channel], wait):
                        got = hot
                if got is not None:
                    hot = got
                    next_look[hot] = 0.0
                    self.transport.let_the_loop_take(_HANDOVER_WAIT)
            except Exception:  # the broker is down or a queue is gone: retry, never die
                if self.stopped.is_set():
                    return
                log.exception("fetching for connection %x failed; retrying", id(self.transport))
                self.stopped.wait(1.0)


class Channel(virtual.Channel):
    """A kombu channel on one capa pub/sub component."""

    QoS = QoS
    supports_fanout = True
    do_restore = True
    from_transport_options = (
        *virtual.Channel.from_transport_options,
        "topic_prefix",
        "visibility_timeout",
        "max_attempts",
        "dead_letter_suffix",
        "prefetch_limit",
    )
    topic_prefix = ""
    visibility_timeout: float | None = None
    max_attempts = 5
    dead_letter_suffix = ".dead"
    prefetch_limit = 100

    def __init__(self, connection: Transport, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self.transport = connection
        self.pubsub: PubSub = connection.pubsub
        self.lease = float(self.visibility_timeout or self.pubsub.lease)
        self.max_attempts = int(self.max_attempts or 0)
        self.room = connection.room
        self._held = 0  # deliveries of this channel not settled yet (buffered or delivered)
        self._no_ack: set[str] = set()

    # --- names -----------------------------------------------------------------------------

    def queue_topic(self, queue: str, band: int = 0) -> str:
        return f"{self.topic_prefix}{queue}" + (f".p{band}" if band else "")

    def route_topic(self, exchange: str, routing_key: str | None = None) -> str:
        base = f"{self.topic_prefix}exchange/{exchange}"
        return base if routing_key is None else f"{base}/{routing_key}"

    def sources(self, queue: str) -> list[Source]:
        """The topics ``queue`` receives from, highest priority band first."""
        bands = PRIORITY_STEPS if queue in self.state.priorities else (0,)
        out = [Source(self.queue_topic(queue, b), b) for b in reversed(bands)]
        for exchange, routing_key, _ in list(self.state.queue_bindings(queue)):
            if not exchange or _identity(exchange, routing_key, queue):
                continue
            kind = self.typeof(exchange).type
            source = (
                Source(self.route_topic(exchange, routing_key), 0)
                if kind == "direct"
                else Source(self.route_topic(exchange), 0, exchange)
            )
            if source not in out:
                out.append(source)
        return out

    def first_source(self, sources: list[Source]) -> Source:
        # A queue bound to a fanout/topic exchange (pidbox, events) mostly receives from it;
        # any other queue from its own topic (band 0, after the higher bands).
        for source in sources:
            if source.exchange is not None:
                return source
        return next(s for s in sources if s.priority == 0)

    def ensure(self, topic: str, group: str) -> None:
        if (topic, group) not in self.state.ensured:
            self.pubsub.ensure_group(topic, group)
            self.state.ensured.add((topic, group))

    # --- declaring -------------------------------------------------------------------------

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        if kwargs.get("auto_delete"):
            self.state.auto_delete.add(queue)
        arguments = kwargs.get("arguments") or {}
        max_priority = arguments.get("x-max-priority")
        if max_priority:
            self.state.priorities[queue] = int(max_priority)
        bands = PRIORITY_STEPS if queue in self.state.priorities else (0,)
        for band in bands:
            self.ensure(self.queue_topic(queue, band), queue)

    def prepare_queue_arguments(self, arguments: Any, **kwargs: Any) -> Any:
        # Queue(max_priority=...) arrives as x-max-priority, as on RabbitMQ.
        return to_rabbitmq_queue_arguments(arguments, **kwargs)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        return True

    def queue_bind(
        self, queue: str, exchange: str | None = None, routing_key: str = "",
        arguments: Any = None, **kwargs: Any,
    ) -> None:
        exchange = exchange or "amq.direct"
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)
        kind = self.typeof(exchange).type
        if kind == "direct" and _identity(exchange, routing_key, queue):
            return  # routed to the queue's own topic by name (see basic_publish)
        topic = self.route_topic(exchange, routing_key if kind == "direct" else None)
        # The group is the binding as the broker keeps it: from now on the queue gets a copy.
        self.ensure(topic, queue)

    def _queue_bind(self, *args: Any) -> None:
        """Bindings are made in queue_bind (groups); nothing more to do here."""

    def _size(self, queue: str) -> int:
        """Messages waiting in the queue's groups; those fetched ahead for a consumer are held,
        as prefetched messages are unacked on RabbitMQ, and do not count."""
        size = 0
        for source in self.sources(queue):
            self.ensure(source.topic, queue)
            with contextlib.suppress(UnsupportedFeature):
                size += self.pubsub.backlog(source.topic, group=queue)
        return size

    def _purge(self, queue: str) -> int:
        purged = 0
        for source in self.sources(queue):
            with contextlib.suppress(UnsupportedFeature):
                purged += self.pubsub.purge(source.topic, group=queue)
        return purged

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> None:
        sources = self.sources(queue)  # before kombu forgets the queue's bindings
        super().queue_delete(queue, if_unused, if_empty, **kwargs)
        fetcher = self.transport.fetcher
        if fetcher is not None and queue not in self._active_queues:
            fetcher.wait_out(queue)  # a pull under way would declare the group again
        for source in sources:
            try:
                self.pubsub.delete_group(source.topic, group=queue)
            except UnsupportedFeature:
                with contextlib.suppress(UnsupportedFeature):
                    self.pubsub.purge(source.topic, group=queue)
            self.state.ensured.discard((source.topic, queue))
        self.state.priorities.pop(queue, None)
        self.state.auto_delete.discard(queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        """kombu calls this once per binding; queue_delete removes the groups, once."""

    # --- publishing ------------------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        band = 0
        if queue in self.state.priorities:
            priority = self._get_message_priority(message)
            band = max(step for step in PRIORITY_STEPS if step <= priority)
        self._publish(self.queue_topic(queue, band), message)

    def _publish(self, topic: str, message: dict[str, Any]) -> None:
        body = json.dumps(message, separators=(",", ":")).encode()
        self.pubsub.publish_bytes(topic, body, {"content-type": CONTENT_TYPE})

    def basic_publish(
        self, message: dict[str, Any], exchange: str, routing_key: str, **kwargs: Any
    ) -> None:
        self._inplace_augment_message(message, exchange, routing_key)
        if not exchange:
            self._put(routing_key, message)
            return
        kind = self.typeof(exchange).type
        if kind == "direct":
            try:
                table = self.get_table(exchange)
            except KeyError:
                table = []
            queues = {q for key, _, q in table if key == routing_key}
            if queues:
                for queue in queues:
                    self._put(queue, message)
                return
            if exchange == routing_key:
                # Queue X on exchange X with key X (Celery's queues, SimpleQueue): by name.
                self._put(routing_key, message)
                return
            # Bound in another process (a reply queue, say): the broker knows, by groups.
            self._publish(self.route_topic(exchange, routing_key), message)
        else:
            self._publish(self.route_topic(exchange), message)

    # --- consuming -------------------------------------------------------------------------

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> None:
        super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)
        if no_ack:
            self._no_ack.add(queue)
        for source in self.sources(queue):
            self.ensure(source.topic, queue)
        self.transport.start_fetching()
        self.room.changed()

    def basic_cancel(self, consumer_tag: str) -> None:
        queue = self._tag_to_queue.get(consumer_tag)
        super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack.discard(queue)
            self._return_buffered(queue)
            consumed = any(queue in channel._active_queues for channel in self.transport.channels)
            fetcher = self.transport.fetcher
            if fetcher is not None and not consumed and self.transport.held_by(self, queue):
                # A pull under way for the queue hands back what it gets: let it do so now, not
                # after the caller requeues the messages it holds (they would pass those).
                fetcher.wait_out(queue)
            if queue in self.state.auto_delete and not consumed:
                try:
                    self.queue_delete(queue)  # as a broker deletes an auto-delete queue
                except CapaError as exc:  # cancelling must work with the server away
                    log.warning("could not delete auto-delete queue %r (%s); its group stays",
                                queue, exc)

    def consumed_sources(self) -> list[_Consumed]:
        """Every topic of every queue consumed on this channel."""
        return [
            _Consumed(self, q, s)
            for q in list(dict.fromkeys(self._active_queues)) for s in self.sources(q)
        ]

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        # A consumer of this queue on the channel may have fetched it already.
        wait = _GET_WAIT if queue in self._active_queues else 0.0
        payload = self.transport.take_buffered(self, queue, wait)
        if payload is None:
            try:
                payload = self._get(queue)
            except Empty:
                return None
        message = self.Message(payload, channel=self)
        if no_ack:
            self.settle(message.delivery_tag, ACK)
        else:
            self.qos.append(message, message.delivery_tag)
        return message

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        sources = self.sources(queue)
        # A look at every topic, then a short wait on the queue's own: a message published a
        # moment ago may still be on its way into a server's queue.
        attempts = [(s, 0.0) for s in sources] + [(self.first_source(sources), _GET_WAIT)]
        for source, wait in attempts:
            self.ensure(source.topic, queue)
            deliveries = self.pull(source, queue, 1, wait if timeout is None else timeout)
            accepted = self.accept(queue, source, deliveries)
            if accepted:
                return accepted[0]
        raise Empty()

    def basic_qos(
        self, prefetch_size: int = 0, prefetch_count: int = 0, apply_global: bool = False
    ) -> None:
        super().basic_qos(prefetch_size, prefetch_count, apply_global)
        self.room.changed()

    def pull(self, source: Source, queue: str, n: int, timeout: float) -> list[Delivery]:
        return self.pubsub.pull_deliveries(source.topic, queue, n, timeout, self.lease)

    def free(self) -> int:
        """How many more messages this channel may hold now (its prefetch budget)."""
        limit = self.qos.prefetch_count or self.prefetch_limit
        return max(0, min(_BATCH, limit - self._held))

    def accept(
        self, queue: str, source: Source, deliveries: Iterable[Delivery],
        fetcher: _Fetcher | None = None,
    ) -> list[dict[str, Any]]:
        """Turn pulled deliveries into kombu payloads; buffer them when a fetcher pulled them."""
        accepted = []
        for delivery in deliveries:
            if self.max_attempts and delivery.attempt > self.max_attempts:
                reason = f"delivered {delivery.attempt - 1} times without an ack"
                self._dead_letter(queue, source.topic, delivery, reason)
                continue
            try:
                payload = json.loads(delivery.data)
                properties = payload["properties"]
            except (ValueError, KeyError, TypeError):
                self._dead_letter(queue, source.topic, delivery, "not a kombu message")
                continue
            if source.exchange is not None and not self._routes_to(
                source.exchange, properties.get("delivery_info", {}).get("routing_key"), queue
            ):
                self.pubsub.ack_deliveries(source.topic, queue, [delivery.id])
                continue
            tag = self.transport.hold(
                _Held(self, source.topic, queue, delivery.id, delivery.attempt, delivery.data),
                self.lease,
            )
            properties["delivery_tag"] = tag
            info = properties.setdefault("delivery_info", {})
            info["redelivered"] = delivery.attempt > 1
            if fetcher is not None and (
                fetcher.stopped.is_set() or self.closed or queue not in self._active_queues
            ):
                self.settle(tag, REQUEUE, count_attempt=False)
                continue
            accepted.append(payload)
            if fetcher is not None:
                priority = source.priority
                if queue in self.state.priorities:
                    priority = self._get_message_priority(payload)
                self.transport.buffer(self, queue, priority, tag, payload)
        return accepted

    def _routes_to(self, exchange: str, routing_key: str | None, queue: str) -> bool:
        try:
            table = [m for m in self.get_table(exchange) if m[2] == queue]
        except KeyError:
            return True  # bound by another process of this queue: trust the broker's copy
        if not table:
            return True
        return bool(self.typeof(exchange).lookup(table, exchange, routing_key or "", None))

    def settle(self, tag: str, action: str, count_attempt: bool = True) -> None:
        """Ack, requeue or dead-letter the capa delivery behind a kombu delivery tag."""
        held = self.transport.release(tag)
        if held is None:
            return
        try:
            if action == ACK:
                self.pubsub.ack_deliveries(held.topic, held.group, [held.delivery_id])
            elif action == REQUEUE and not (
                count_attempt and self.max_attempts and held.attempt >= self.max_attempts
            ):
                self.pubsub.nack_deliveries(held.topic, held.group, [held.delivery_id], 0.0)
            else:
                reason = "rejected" if action == DEAD else f"requeued {held.attempt} times"
                self._dead_letter(
                    held.group, held.topic,
                    Delivery(held.delivery_id, held.data, held.attempt, {}), reason,
                )
        finally:
            held.channel.count_held(-1)

    def _dead_letter(self, queue: str, topic: str, delivery: Delivery, reason: str) -> None:
        target = self.queue_topic(queue + self.dead_letter_suffix)
        log.warning(
            "dead-lettering a message of queue %r to %r: %s", queue, target, reason
        )
        headers = {
            "content-type": CONTENT_TYPE,
            "capa-dead-letter-reason": reason,
            "capa-original-topic": topic,
        }
        self.pubsub.publish_bytes(target, delivery.data, headers)
        self.pubsub.ack_deliveries(topic, queue, [delivery.id])

    def count_held(self, n: int) -> None:
        with self.room.lock:
            self._held += n
            self.room.changed_locked()

    def _return_buffered(self, queue: str | None = None) -> None:
        for tag in self.transport.unbuffer(self, queue):
            self.settle(tag, REQUEUE, count_attempt=False)

    def close(self) -> None:
        if self.closed:
            return
        transport = self.transport
        super().close()  # cancels consumers, restores delivered unacked messages
        self.closed = True
        for tag in transport.unbuffer(self, None):
            self.settle(tag, REQUEUE, count_attempt=False)
        for tag in transport.held_by(self):
            self.settle(tag, REQUEUE, count_attempt=False)


class Transport(virtual.Transport):
    """kombu transport ``capa``: registered under that alias by capa_compat.kombu."""

    Channel = Channel
    driver_type = "capa"
    driver_name = "capa"
    connection_errors = (ComponentUnavailable, *virtual.Transport.connection_errors)
    default_port = None
    polling_interval = None
    # Celery's worker runs a transport that says asynchronous on its own event loop (the hub),
    # with the prefork pool that writes to its processes without helper threads: fetchers wake
    # the hub through a pipe (register_with_event_loop), as kombu's qpid transport does.
    implements = virtual.Transport.implements.extend(
        asynchronous=True,
        exchange_type=frozenset(["direct", "topic", "fanout"]),
        heartbeats=False,
    )

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.state = BrokerState()
        self._pubsub: PubSub | None = None
        self._lock = threading.Lock()
        self._ready = threading.Condition()
        self._buffered: dict[Channel, list[tuple[int, int, str, str, dict[str, Any]]]] = (
            defaultdict(list)
        )
        self._held: dict[str, _Held] = {}
        self._tags = itertools.count(1)
        self._seq = itertools.count()
        self._prefix = f"{id(self):x}."
        self.room = _Room()
        self.fetcher: _Fetcher | None = None
        self._wakeup: tuple[int, int] | None = None  # (read, write) ends, while on a hub
        self._hub: Any = None
        self._wakeup_due = False  # a byte is in the pipe that the hub has not read yet
        self._taken = threading.Event()  # set when the event loop took what was buffered
        self._taken.set()

    @property
    def default_connection_params(self) -> dict[str, Any]:
        return {"port": None, "hostname": runtimes.DEFAULT_COMPONENT}

    @property
    def pubsub(self) -> PubSub:
        """The capa pub/sub client this connection's URL names."""
        if self._pubsub is None:
            with self._lock:
                if self._pubsub is None:
                    self._pubsub = self._resolve()
        return self._pubsub

    def _resolve(self) -> PubSub:
        client = self.client
        hostname = client.hostname or runtimes.DEFAULT_COMPONENT
        if client.uri_prefix == runtimes.CAPA_SCHEME or "://" in hostname:
            metadata = runtimes.legacy_metadata(hostname, client.transport_options)
            runtime, name = runtimes.resolve("pubsub", hostname, metadata)
        else:
            name = hostname if hostname != "localhost" else runtimes.DEFAULT_COMPONENT
            runtime, name = runtimes.resolve("pubsub", name)
        try:
            return runtime.pubsub(name)
        except ComponentNotFound as exc:
            raise ComponentNotFound("pubsub", name, exc.known) from None

    def start_fetching(self) -> None:
        with self._lock:
            if self.fetcher is None:
                self.fetcher = _Fetcher(self)

    def establish_connection(self) -> Transport:
        # Fail now, as kombu's own transports do: an unknown component name lists the
        # configured ones, an unreachable server is a connection error kombu retries.
        self.pubsub.ping()
        return super().establish_connection()  # type: ignore[no-any-return]

    def driver_version(self) -> str:
        return "capa"

    # --- deliveries held by this connection -------------------------------------------------

    def hold(self, held: _Held, lease: float) -> str:
        tag = f"{self._prefix}{next(self._tags)}"
        self.pubsub.lease_keeper.hold(held.topic, held.group, held.delivery_id, lease)
        self._held[tag] = held
        held.channel.count_held(1)
        return tag

    def release(self, tag: str) -> _Held | None:
        held = self._held.pop(tag, None)
        if held is not None:
            self.pubsub.lease_keeper.release(held.topic, held.group, held.delivery_id)
        return held

    def held_by(self, channel: Channel, queue: str | None = None) -> list[str]:
        """The tags of what ``channel`` holds (of ``queue`` only, when given)."""
        return [
            tag for tag, held in list(self._held.items())
            if held.channel is channel and (queue is None or held.group == queue)
        ]

    def buffer(
        self, channel: Channel, queue: str, priority: int, tag: str, payload: dict[str, Any]
    ) -> None:
        with self._ready:
            heapq.heappush(
                self._buffered[channel], (-priority, next(self._seq), queue, tag, payload)
            )
            self._ready.notify_all()
            if self._wakeup is not None and not self._wakeup_due:
                self._wakeup_due = True
                self._taken.clear()
                os.write(self._wakeup[1], b"!")

    def let_the_loop_take(self, timeout: float) -> None:
        """Wait (up to ``timeout`` s) for the event loop to take what was buffered.

        Blocking here hands the interpreter to the loop's thread at once: the fetcher would
        otherwise hold it through its next round, up to its next pull, while the loop's thread
        waits to deliver.
        """
        self._taken.wait(timeout)

    def unbuffer(self, channel: Channel, queue: str | None) -> list[str]:
        with self._ready:
            entries = self._buffered.get(channel, [])
            keep = [e for e in entries if queue is not None and e[2] != queue]
            gone = [e[3] for e in entries if queue is None or e[2] == queue]
            heapq.heapify(keep)
            self._buffered[channel] = keep
            return gone

    def take_buffered(
        self, channel: Channel, queue: str, wait: float = 0.0
    ) -> dict[str, Any] | None:
        """A buffered message of ``queue``, waiting up to ``wait`` s for its fetcher."""
        deadline = time.monotonic() + wait
        with self._ready:
            while True:
                entries = self._buffered.get(channel, [])
                for index, entry in enumerate(entries):
                    if entry[2] == queue:
                        entries.pop(index)
                        heapq.heapify(entries)
                        return entry[4]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._ready.wait(left)

    # --- the consuming loop ------------------------------------------------------------------

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """Deliver on ``loop`` (Celery's hub) whenever a fetcher has buffered messages."""
        self.unregister_from_event_loop(connection, self._hub)
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        with self._ready:
            self._wakeup, self._hub, self._wakeup_due = (read, write), loop, True
        os.write(write, b"!")  # deliver anything buffered before now
        loop.add_reader(read, self._on_wakeup)

    def unregister_from_event_loop(self, connection: Any, loop: Any) -> None:
        with self._ready:
            wakeup, self._wakeup, self._hub = self._wakeup, None, None
        self._taken.set()  # drain_events delivers from now on: nothing to wait for
        if wakeup is None:
            return
        if loop is not None:
            loop.remove_reader(wakeup[0])
        for fd in wakeup:
            os.close(fd)

    def _on_wakeup(self) -> None:
        with self._ready:
            if self._wakeup is None:
                return
            with contextlib.suppress(BlockingIOError):
                os.read(self._wakeup[0], 4096)
            self._wakeup_due = False
            batch = self._take_ready()
        self._taken.set()
        self._deliver_batch(batch)

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """Deliver what fetchers have buffered; wait up to ``timeout`` for the first message."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                batch = self._take_ready()
                if batch:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError()
                self._ready.wait(remaining)
        self._deliver_batch(batch)

    def _deliver_batch(self, batch: list[tuple[Channel, str, str, dict[str, Any]]]) -> None:
        for channel, queue, tag, payload in batch:
            if queue in channel._no_ack:
                channel.settle(tag, ACK)
            self._deliver(payload, queue)

    def _take_ready(self) -> list[tuple[Channel, str, str, dict[str, Any]]]:
        batch = []
        for channel, entries in list(self._buffered.items()):
            while entries:
                _, _, queue, tag, payload = heapq.heappop(entries)
                batch.append((channel, queue, tag, payload))
        return batch

    def close_channel(self, channel: Any) -> None:
        super().close_channel(channel)
        with self._ready:
            self._buffered.pop(channel, None)

    def close_connection(self, connection: Any) -> None:
        with self._lock:
            fetcher, self.fetcher = self.fetcher, None
        if fetcher is not None:
            fetcher.stop()
        super().close_connection(connection)
        self.unregister_from_event_loop(connection, self._hub)
