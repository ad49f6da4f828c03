"""Pub/sub on RabbitMQ through pika: a topic exchange per component, a durable queue per group.

URL ``amqp://user:password@host:5672/vhost`` (``amqps://`` for TLS; ``//`` or no path is the
vhost ``/``), or Dapr's metadata ``connectionString`` (or ``host``), or ``hostname``, ``port``,
``username``, ``password``, ``vhost``. Other metadata: ``exchange`` (default
``capa.<component name>``), ``reconnectWait`` (longest pause between reconnection attempts,
default 2 s), ``connectTimeout`` (how long a call waits for the broker to answer, default 10 s),
``publishTimeout`` (how long publish() waits for the broker's confirm, default 30 s),
``publisherConfirm`` (whether publish() waits for that confirm, default true; see below),
``queueType`` (``quorum``, the default, or ``classic``; see below) and ``queueExpiry`` (seconds
an unused queue lives before the broker deletes it; unset: forever).

Topology. Topic T is the routing key (``*``, ``#`` and ``%`` escaped, so a topic never acts as a
wildcard). Messages are published persistent on a channel in confirm mode: publish() returns once
the broker confirmed it holds the message. Group G of T is the durable queue ``<exchange>:T:G``
(a quorum queue by default) bound with key T; quorum queues count redeliveries in
``x-delivery-count``, which gives Delivery.attempt. With ``queueType = "classic"`` the group
queues are classic durable queues, which hand a message to a consumer without first committing it
to disk (about half a millisecond less per hop here; Celery declares these by default). They
only flag a redelivery, so the component counts attempts in a header, ``x-capa-attempt``: a
message nacked or whose lease runs out is published again to its queue with the count raised and
the original acked (instead of basic.nack), and so is one the broker redelivers on its own (its
consumer's connection closed). A message requeued so goes to the back of the queue.

Confirms. With ``publisherConfirm`` false (Dapr's setting; kombu's ``confirm_publish`` off, as
Celery has it on RabbitMQ) publish() writes the message on a channel without confirm mode and
returns: no round trip, and no confirm for the broker to send (confirm mode took about a third of
the broker's CPU per Celery task here). As with Dapr and native Celery, a message written just
before the connection drops can then be lost. And a quorum queue may enqueue the last
unconfirmed publishes after a purge sent behind them on the same channel (RabbitMQ appends
enqueues at a lower priority): they are not purged, but they are not lost either.
bulk_publish() always waits for confirms, as it reports failures by entry.

Threading. pika connections are not thread-safe, so each component keeps its one connection on
a private asyncio event loop (pika's asyncio adapter) owned by the component, and only that loop
touches it. A calling thread that finds the loop idle runs it for the length of its call; one
that finds it busy hands its coroutine over and waits; a daemon helper thread of the component
runs the loop for handed-over work and, between calls, turns it over every few milliseconds for
timers and heartbeats (capa_core/components/_eventloop.py: a plain loop thread with
run_coroutine_threadsafe costs two thread switches per call, which a busy machine makes
expensive). Delivery tags belong to a channel, so every delivery in hand is acked, nacked and timed
on that loop.

Pulling. The first waiting pull of a group starts a consumer on the group's queue with a prefetch
of its ``max_messages``; the consumer stands while pulls keep coming, so the broker pushes the
next messages ahead of the next pull (a pull then takes them without a round trip), never more
than that prefetch unsettled at once, as with kombu's own prefetch. When no pull has come for
``_LINGER`` seconds the consumer is cancelled and what it was pushed and nobody took goes back to
the queue for other processes (counting, on a quorum queue, one delivery more). A pull that does
not wait takes what was pushed; with no consumer standing, it basic.get's what is ready.

Leases. RabbitMQ has no visibility timeout, so the component keeps a timer per delivery in hand
and requeues the message (basic.nack with requeue) when its lease runs out unextended; the broker
then counts one more delivery. nack(delay) holds the message the same way for ``delay`` seconds.
When a process dies (or closes) its connection closes and the broker requeues its messages at
once.

Messages for a topic with no group. RabbitMQ would drop them. The exchange has an alternate
exchange ``<exchange>.unrouted`` where every topic published to has a holding queue
``<exchange>.unrouted:T`` (a quorum queue too: on RabbitMQ 3.10 a few hundred durable classic
queues used up the broker's file handle budget, which stalled new connections). The first group
declared for T moves the held messages into its own queue before binding (keeping their order)
and once more after (for any that raced the binding); later groups find the holding queue empty.
Two processes declaring the first two groups of a topic at the same moment may split the held
messages between them.

Dead letters. Only the client layer dead-letters (capa_core/pubsub.py, after max_attempts): the
queues have no dead-letter exchange and no delivery limit, so the broker never drops or diverts a
message on its own. (RabbitMQ 4 gives quorum queues a default delivery limit of 20; this module is
tested on 3.x.)

Reconnection. When the connection drops, publishes waiting for a confirm fail with a transient
error (retried by the dispatch point; a retried publish may be stored twice, which at-least-once
allows); deliveries in hand become invalid (the broker requeues them, and acking one is a no-op);
the component reconnects with exponential backoff up to ``reconnectWait``, and calls made
meanwhile wait up to ``connectTimeout`` for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

from ..errors import CapaError, SettingsError
from ..spi import PubSubComponent, duration
from ..types import Delivery
from ._eventloop import PrivateLoop

log = logging.getLogger("capa_core.rabbitmq")

T = TypeVar("T")

_NAME_LIMIT = 255  # AMQP short strings: queue, exchange names and routing keys
_DELIVERY_COUNT = "x-delivery-count"
_ATTEMPT = "x-capa-attempt"  # the attempt number of a message recounted on a classic queue
_MAX_PREFETCH = 65_535  # basic.qos takes a 16-bit count
_LINGER = 1.0  # seconds a group's consumer stands after the last pull


class RabbitMQUnavailable(ConnectionError):
    """The broker could not be reached, or the connection dropped during the call."""


class RabbitMQRefused(Exception):
    """The broker refused a request for a reason retrying cannot fix (credentials, arguments)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code, self.text = code, text


def routing_key(topic: str) -> str:
    """The routing key of a topic: wildcard characters escaped, so it only matches itself."""
    return topic.replace("%", "%25").replace("*", "%2A").replace("#", "%23")


def _checked_name(name: str, what: str) -> str:
    if len(name.encode("utf-8")) > _NAME_LIMIT:
        raise ValueError(
            f"the RabbitMQ {what} {name!r} is longer than {_NAME_LIMIT} bytes; "
            "use shorter topic, group or exchange names"
        )
    return name


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


class RabbitMQPubSub(PubSubComponent):
    kind = "rabbitmq"
    transient_errors = (RabbitMQUnavailable,)

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.url = self._url()
        self.exchange = self.option("exchange", str, f"capa.{name}")
        if not self.exchange or len(self.exchange.encode("utf-8")) > 200:
            raise SettingsError(
                self.source, "exchange", f"{self.exchange!r} is empty or too long",
                "use a name of 1 to 200 bytes",
            )
        self.reconnect_wait = self.option("reconnectWait", duration, 2.0)
        self.connect_timeout = self.option("connectTimeout", duration, 10.0)
        self.publish_timeout = self.option("publishTimeout", duration, 30.0)
        self.publisher_confirm = self.option("publisherConfirm", bool, True)
        self.queue_type = self.option("queueType", str, "quorum").lower()
        if self.queue_type not in ("quorum", "classic"):
            raise SettingsError(
                self.source, "queueType", f"{self.queue_type!r} is not a queue type this "
                "component runs on", 'set queueType to "quorum" or "classic"',
            )
        expiry: float | None = self.option("queueExpiry", duration, None)
        self.queue_expiry = expiry
        if expiry is not None and expiry < 1:
            raise SettingsError(
                self.source, "queueExpiry", f"{expiry} s is too short",
                "set queueExpiry to at least 1 second, or leave it out",
            )
        self.parameters = self._parameters()
        self._link: _Link | None = None
        self._link_lock = threading.Lock()

    # --- settings -------------------------------------------------------------------------------

    def _url(self) -> str:
        url = self.option("url", str, "", "connectionString", "host")
        if not url:
            hostname = self.option("hostname", str, "")
            if not hostname:
                raise SettingsError(
                    self.source, "url", "no broker address given",
                    'set url = "amqp://user:password@host:5672/vhost" (or Dapr\'s '
                    "connectionString, or hostname with username and password)",
                )
            port = self.option("port", int, 5672)
            user = quote(self.option("username", str, "guest"), safe="")
            password = quote(self.option("password", str, "guest"), safe="")
            vhost = quote(self.option("vhost", str, "/"), safe="")
            scheme = self.option("protocol", str, "amqp")
            url = f"{scheme}://{user}:{password}@{hostname}:{port}/{vhost}"
        scheme = urlsplit(url).scheme.lower()
        if scheme not in {"amqp", "amqps"}:
            raise SettingsError(
                self.source, "url", f"{url!r} is not an AMQP URL",
                "write it as amqp://user:password@host:5672/vhost (or amqps://)",
            )
        return url

    def _parameters(self) -> Any:
        import pika

        try:
            parameters = pika.URLParameters(self.url)
        except (ValueError, TypeError) as exc:
            raise SettingsError(
                self.source, "url", f"cannot be read: {exc}",
                "write it as amqp://user:password@host:5672/vhost?heartbeat=30",
            ) from None
        if not parameters.virtual_host:
            parameters.virtual_host = "/"  # "amqp://host//" means the default vhost, as in kombu
        parameters.client_properties = {"connection_name": f"capa {self.name}"}
        return parameters

    @property
    def address(self) -> str:
        """Where the broker is, for messages: host, port and vhost, never the password."""
        p = self.parameters
        return f"{p.host}:{p.port}/{p.virtual_host}"

    # --- the I/O thread ---------------------------------------------------------------------------

    def _broker(self) -> _Link:
        link = self._link
        if link is None:
            with self._link_lock:
                link = self._link
                if link is None:
                    link = self._link = _Link(self)
        return link

    def _run(self, make: Callable[[_Link], Coroutine[Any, Any, T]], timeout: float) -> T:
        link = self._broker()
        return link.run(make(link), timeout)

    # --- the SPI --------------------------------------------------------------------------------

    def publish(self, topic: str, data: bytes, metadata: Mapping[str, str]) -> None:
        self._run(
            lambda link: link.publish(topic, [(data, metadata)]),
            self.connect_timeout + self.publish_timeout + 5,
        )

    def bulk_publish(
        self, topic: str, entries: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> dict[str, Exception]:
        """Publish all entries at once and wait for their confirms together."""
        if not entries:
            return {}
        outcomes = self._run(
            lambda link: link.publish(topic, [(data, meta) for _, data, meta in entries],
                                      collect=True),
            self.connect_timeout + self.publish_timeout + 5,
        )
        failed: dict[str, Exception] = {}
        for (entry_id, _, _), outcome in zip(entries, outcomes, strict=True):
            if outcome is not None:
                failed[entry_id] = self.translate_error(outcome) or outcome
        return failed

    def ensure_group(self, topic: str, group: str) -> None:
        link = self._link
        if link is not None and (topic, group) in link.groups:
            return  # declared on this connection already (the client asks before every pull)
        self._run(lambda link: link.ensure_group(topic, group), self.connect_timeout + 30)

    def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        if max_messages < 1:
            return []
        return self._run(
            lambda link: link.pull(topic, group, max_messages, timeout, lease),
            self.connect_timeout + timeout + 30,
        )

    def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        self._settle(topic, group, ids, "ack", 0.0)

    def nack(self, topic: str, group: str, ids: Sequence[str], delay: float) -> None:
        self._settle(topic, group, ids, "nack", delay)

    def extend(self, topic: str, group: str, ids: Sequence[str], lease: float) -> None:
        self._settle(topic, group, ids, "extend", lease)

    def _settle(self, topic: str, group: str, ids: Sequence[str], how: str, seconds: float) -> None:
        if not ids:
            return
        link = self._link
        if link is None:  # nothing was ever pulled here: these ids are not ours
            return
        link.settle_soon(topic, group, list(ids), how, seconds)

    def ping(self) -> None:
        self._run(lambda link: link.connected(), self.connect_timeout + 5)

    def delete_group(self, topic: str, group: str) -> None:
        self._run(lambda link: link.delete_group(topic, group), self.connect_timeout + 30)

    def purge(self, topic: str, group: str) -> int:
        return self._run(lambda link: link.purge(topic, group), self.connect_timeout + 30)

    def backlog(self, topic: str, group: str) -> int:
        return self._run(lambda link: link.backlog(topic, group), self.connect_timeout + 30)

    def translate_error(self, exc: Exception) -> CapaError | None:
        if isinstance(exc, RabbitMQRefused):
            if exc.code == 403:
                return SettingsError(
                    self.source, "url", f"RabbitMQ at {self.address} refused access: {exc.text}",
                    "check the user name, password and the user's permissions on the vhost",
                )
            if exc.code == 406 and "x-queue-type" in exc.text:
                return SettingsError(
                    self.source, "queueType", f"RabbitMQ refused a declaration: {exc.text}",
                    f"the queue exists with another type than {self.queue_type!r}: set "
                    "queueType to the type it has, or delete the queue",
                )
            if exc.code == 406:
                return SettingsError(
                    self.source, "exchange", f"RabbitMQ refused a declaration: {exc.text}",
                    "a queue or exchange of that name exists with other arguments: delete it, "
                    "or set another exchange name",
                )
            return SettingsError(
                self.source, "url", f"RabbitMQ at {self.address} refused: {exc.text}",
                "check the broker's settings and permissions",
            )
        return None

    def close(self) -> None:
        with self._link_lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()


# --- the connection owner, on its own event loop -----------------------------------------------


class _Channel:
    """A pika channel, the futures waiting on it, and what is in hand on it."""

    def __init__(self, channel: Any, epoch: int) -> None:
        self.channel = channel
        self.epoch = epoch
        self.waiting: set[asyncio.Future[Any]] = set()
        self.lost: BaseException | None = None
        self.get_waiter: asyncio.Future[Any] | None = None
        # publisher confirms: sequence number -> the publish waiting for it
        self.confirms: dict[int, asyncio.Future[None]] = {}
        self.sequence = 0

    @property
    def usable(self) -> bool:
        return self.lost is None and bool(self.channel.is_open)

    def watch(self, future: asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Fail ``future`` if this channel closes before it is done."""
        if self.lost is not None:
            future.set_exception(self.lost)
        else:
            self.waiting.add(future)
            future.add_done_callback(self.waiting.discard)
        return future

    async def rpc(self, start: Callable[[Callable[[Any], None]], Any]) -> Any:
        """Send a synchronous AMQP method (``start(callback)``) and wait for its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.watch(future)

        def done(frame: Any) -> None:
            if not future.done():
                future.set_result(frame)

        try:
            start(done)
        except Exception as exc:
            raise _unavailable(exc) from exc
        return await future

    def closed(self, error: BaseException) -> None:
        self.lost = error
        for future in list(self.waiting) + list(self.confirms.values()):
            if not future.done():
                future.set_exception(error)
        self.waiting.clear()
        self.confirms.clear()


@dataclass
class _Feed:
    """One (topic, group) on this connection: its channel and the deliveries in hand."""

    queue: str
    channel: _Channel | None = None
    qos: int = 0  # the channel's basic.qos prefetch, which consumers started later get
    held: dict[int, asyncio.TimerHandle] = field(default_factory=dict)  # tag -> lease timer
    # Classic queues: what a delivery in hand needs to be published again when it is requeued.
    kept: dict[int, tuple[Any, bytes]] = field(default_factory=dict)
    # The standing consumer, its prefetch, and what the broker pushed to it that no pull took.
    consumer: str | None = None
    window: int = 0
    arrived: deque[tuple[Any, Any, bytes]] = field(default_factory=deque)
    waiters: set[asyncio.Future[None]] = field(default_factory=set)  # pulls waiting for arrivals
    pulls: int = 0  # pulls in progress
    retire: asyncio.TimerHandle | None = None  # cancels the consumer once pulls stop coming
    consume_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    open_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@functools.cache
def _connection_class() -> type:
    """pika's asyncio connection, writing each message in one piece.

    pika hands a message's frames (method, header, body) to the socket one by one, a send()
    each; joined, a publish costs one system call and one segment for the broker to read.
    """
    from pika.adapters.asyncio_connection import AsyncioConnection

    if not all(hasattr(AsyncioConnection, name)
               for name in ("_output_marshaled_frames", "_adapter_emit_data")):
        plain: type = AsyncioConnection  # (pika's internals changed: frames go one by one)
        return plain

    class Connection(AsyncioConnection):  # type: ignore[misc]
        def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
            if len(marshaled_frames) > 1:
                data = b"".join(marshaled_frames)
                self.bytes_sent += len(data)
                self.frames_sent += len(marshaled_frames)
                self._adapter_emit_data(data)
            else:
                super()._output_marshaled_frames(marshaled_frames)

    return Connection


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _unavailable(exc: BaseException) -> BaseException:
    """The error callers get for a pika failure: refusals stay, the rest is transient."""
    import pika.exceptions as px

    if isinstance(exc, RabbitMQRefused | RabbitMQUnavailable):
        return exc
    if isinstance(exc, px.ProbableAuthenticationError | px.ProbableAccessDeniedError):
        return RabbitMQRefused(403, str(exc) or type(exc).__name__)
    closed_by_broker = px.ChannelClosedByBroker | px.ConnectionClosedByBroker
    if isinstance(exc, closed_by_broker) and exc.reply_code in (403, 406):
        return RabbitMQRefused(exc.reply_code, exc.reply_text)
    return RabbitMQUnavailable(f"{type(exc).__name__}: {exc}")


def _cause(exc: BaseException) -> str:
    """The innermost reason of a failed connection (pika nests them in workflow errors)."""
    seen: set[int] = set()
    pending: list[Any] = [exc]
    found: BaseException = exc
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError):
            return f"{type(current).__name__}: {current}"
        found = current
        pending.extend(current.args)
        pending.extend(getattr(current, "exceptions", None) or ())
        pending.append(getattr(current, "exception", None))
    return f"{type(found).__name__}: {found}" if str(found) else type(found).__name__


class _Link:
    """The one pika connection of a component, on the component's private event loop."""

    def __init__(self, owner: RabbitMQPubSub) -> None:
        self.owner = owner
        self.exchange = owner.exchange
        self.unrouted = f"{owner.exchange}.unrouted"
        expires = (
            {} if owner.queue_expiry is None else {"x-expires": int(owner.queue_expiry * 1000)}
        )
        self.group_arguments = {"x-queue-type": owner.queue_type, **expires}
        self.counts_deliveries = owner.queue_type == "quorum"
        self.holding_arguments = {"x-queue-type": "quorum", **expires}
        # Exchanges go when their last queue does, when queues expire (test runs, mostly).
        self.auto_delete = owner.queue_expiry is not None
        self.runner = PrivateLoop(f"capa-rabbitmq-{owner.name}", RabbitMQUnavailable)
        self.loop = self.runner.loop
        self.connection: Any = None
        self.control: _Channel | None = None  # declarations
        self.publisher: _Channel | None = None  # confirm mode: publishes waited for, moves
        self.sender: _Channel | None = None  # publishes not waited for (publisherConfirm false)
        self.background: set[asyncio.Task[None]] = set()  # recounts
        self.feeds: dict[tuple[str, str], _Feed] = {}
        self.topics: set[str] = set()
        self.keys: dict[str, str] = {}  # topic -> routing key
        self.groups: set[tuple[str, str]] = set()
        self.exchanges_declared = False
        self.epochs = itertools.count(1)
        self.connected_once = False
        self.closing = False
        self.last_error: BaseException | None = None
        self.state: asyncio.Condition | None = None
        self.topology_lock: asyncio.Lock | None = None
        self.open_lock: asyncio.Lock | None = None
        self.maintainer: asyncio.Task[None] | None = None
        self.run(self._start(), 10.0)

    # --- crossing threads ---------------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the connection's loop and wait for its result."""
        return self.runner.run(coroutine, timeout)

    def settle_soon(self, topic: str, group: str, ids: list[str], how: str, seconds: float) -> None:
        """ack, nack or extend on the loop's next run, without waiting for it.

        Acks need no answer from the broker; calls made later (a pull, close) run after them on
        the loop, so they still go out first.
        """
        self.runner.soon(self.settle, topic, group, ids, how, seconds)

    async def _start(self) -> None:
        self.state = asyncio.Condition()
        self.topology_lock = asyncio.Lock()
        self.open_lock = asyncio.Lock()
        self.maintainer = self.loop.create_task(self._maintain())

    # --- connecting -----------------------------------------------------------------------------

    async def _maintain(self) -> None:
        """Keep a connection open: reconnect with exponential backoff whenever it drops."""
        backoff = 0.1
        while not self.closing:
            try:
                lost = await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = _unavailable(exc)
                if isinstance(error, RabbitMQUnavailable):
                    error = RabbitMQUnavailable(
                        f"cannot connect to RabbitMQ at {self.owner.address}: {_cause(exc)}"
                    )
                self.last_error = error
                log.warning("%s", error)
                await self._announce()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, max(self.owner.reconnect_wait, 0.1))
                continue
            backoff = 0.1
            self.connected_once = True
            self.last_error = None
            await self._announce()
            reason = await lost
            if self._closed():
                return
            log.warning("lost the connection to RabbitMQ at %s: %s", self.owner.address, reason)
            self._forget_connection(_unavailable(reason))

    def _closed(self) -> bool:
        return self.closing

    async def _announce(self) -> None:
        assert self.state is not None
        async with self.state:
            self.state.notify_all()

    async def _connect(self) -> asyncio.Future[BaseException]:
        opened: asyncio.Future[Any] = self.loop.create_future()
        lost: asyncio.Future[BaseException] = self.loop.create_future()

        def on_open(connection: Any) -> None:
            if not opened.done():
                opened.set_result(connection)

        def on_open_error(connection: Any, exc: BaseException) -> None:
            if not opened.done():
                opened.set_exception(exc)

        def on_close(connection: Any, reason: BaseException) -> None:
            if not opened.done():
                opened.set_exception(reason)
            if not lost.done():
                lost.set_result(reason)

        connection = _connection_class()(
            self.owner.parameters, on_open, on_open_error, on_close, custom_ioloop=self.loop
        )
        try:
            await opened
            self.connection = connection
            self.control = await self._open_channel()
            self.publisher = await self._open_channel(confirm=True)
        except BaseException:
            self.connection = None
            if connection.is_open:
                connection.close()
            raise
        return lost

    def _forget_connection(self, error: BaseException) -> None:
        """The connection is gone: fail what waits on it, drop what was in hand."""
        self.connection = None
        for channel in (self.control, self.publisher, self.sender):
            if channel is not None:
                channel.closed(error)
        self.control = self.publisher = self.sender = None
        for feed in self.feeds.values():
            self._drop_feed_channel(feed, error)
        self.exchanges_declared = False  # declarations are cheap; redo them after a restart
        self.topics.clear()
        self.groups.clear()

    async def connected(self) -> None:
        await self._ready()

    async def _ready(self) -> Any:
        """The open connection, waiting up to connectTimeout for it."""
        if self.connection is not None and self.connection.is_open:
            return self.connection
        if self.closing:
            raise RabbitMQUnavailable("the component is closed")
        assert self.state is not None
        loop = self.loop
        deadline = loop.time() + self.owner.connect_timeout
        async with self.state:
            while self.connection is None or not self.connection.is_open:
                error = self.last_error
                if isinstance(error, RabbitMQRefused) or (
                    error is not None and not self.connected_once
                ):
                    # Wrong credentials, or a broker never reached: say so now, not after waiting.
                    raise error
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise RabbitMQUnavailable(
                        f"RabbitMQ at {self.owner.address} is unreachable: "
                        f"{error or 'still connecting'}"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.state.wait(), remaining)
        return self.connection

    async def _open_channel(self, *, confirm: bool = False) -> _Channel:
        import pika.spec

        connection = self.connection
        if connection is None or not connection.is_open:
            raise RabbitMQUnavailable("not connected")
        opened: asyncio.Future[Any] = self.loop.create_future()
        holder: list[_Channel] = []

        def on_open(channel: Any) -> None:
            if not opened.done():
                opened.set_result(channel)

        def on_close(channel: Any, reason: BaseException) -> None:
            error = _unavailable(reason)
            if not opened.done():
                opened.set_exception(error)
            if holder:
                holder[0].closed(error)

        try:
            raw = connection.channel(on_open_callback=on_open)
        except Exception as exc:
            raise _unavailable(exc) from exc
        raw.add_on_close_callback(on_close)
        await opened
        channel = _Channel(raw, next(self.epochs))
        holder.append(channel)
        raw.add_callback(
            lambda frame: self._get_empty(channel), [pika.spec.Basic.GetEmpty], one_shot=False
        )
        if confirm:
            await channel.rpc(
                lambda cb: raw.confirm_delivery(
                    lambda frame: self._confirmed(channel, frame), callback=cb
                )
            )
        return channel

    async def _own_channel(self, role: Literal["control", "publisher", "sender"]) -> _Channel:
        """The connection's channel for ``role``: "control" (declarations), "publisher"
        (confirm mode: publishes waited for, moves, recounts) or "sender" (publishes not
        waited for); opened again when it was lost."""
        await self._ready()
        channel: _Channel | None = getattr(self, role)
        if channel is None or not channel.usable:
            assert self.open_lock is not None
            async with self.open_lock:
                channel = getattr(self, role)
                if channel is None or not channel.usable:
                    channel = await self._open_channel(confirm=role == "publisher")
                    setattr(self, role, channel)
        return channel

    # --- publishing -----------------------------------------------------------------------------

    def _send(
        self, channel: _Channel, exchange: str, key: str, body: bytes, properties: Any
    ) -> asyncio.Future[None]:
        """Publish on the confirm channel; the future resolves when the broker confirms."""
        future: asyncio.Future[None] = self.loop.create_future()
        if not channel.usable:
            future.set_exception(channel.lost or RabbitMQUnavailable("the channel is closed"))
            return future
        try:
            channel.channel.basic_publish(exchange, key, body, properties)
        except Exception as exc:
            future.set_exception(_unavailable(exc))
            return future
        channel.sequence += 1
        channel.confirms[channel.sequence] = future
        return future

    def _confirmed(self, channel: _Channel, frame: Any) -> None:
        import pika.spec

        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        if method.multiple:
            tags = [t for t in itertools.takewhile(lambda t: t <= method.delivery_tag,
                                                   channel.confirms)]
        else:
            tags = [method.delivery_tag]
        for tag in tags:
            future = channel.confirms.pop(tag, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(None)
            else:
                future.set_exception(
                    RabbitMQUnavailable("the broker could not store the message (basic.nack)")
                )

    async def publish(
        self, topic: str, entries: list[tuple[bytes, Mapping[str, str]]], collect: bool = False
    ) -> list[Exception | None]:
        import pika

        key = self.keys.get(topic)
        if key is None:
            key = self.keys[topic] = _checked_name(routing_key(topic), "routing key")
        await self._ensure_topic(topic)
        messages = [
            (body, pika.BasicProperties(
                delivery_mode=2, headers=dict(metadata), content_type=metadata.get("content-type")
            ))
            for body, metadata in entries
        ]
        if not (self.owner.publisher_confirm or collect):
            sender = await self._own_channel("sender")
            try:
                for body, properties in messages:
                    sender.channel.basic_publish(self.exchange, key, body, properties)
            except Exception as exc:
                raise _unavailable(exc) from exc
            return [None] * len(entries)
        channel = await self._own_channel("publisher")
        confirms = [self._send(channel, self.exchange, key, body, properties)
                    for body, properties in messages]
        try:
            async with asyncio.timeout(self.owner.publish_timeout):
                if len(confirms) == 1 and not collect:  # the common case, without gather
                    await confirms[0]
                    return [None]
                results = await asyncio.gather(*confirms, return_exceptions=True)
        except TimeoutError:
            raise RabbitMQUnavailable(
                f"RabbitMQ at {self.owner.address} did not confirm the message within "
                f"{self.owner.publish_timeout:g} s"
            ) from None
        outcomes: list[Exception | None] = [
            None if not isinstance(r, BaseException)
            else r if isinstance(r, Exception)
            else RabbitMQUnavailable(f"the publish was interrupted: {r!r}")
            for r in results
        ]
        if not collect:
            for outcome in outcomes:
                if outcome is not None:
                    raise outcome
        return outcomes

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # --- topology -------------------------------------------------------------------------------

    def _queue(self, topic: str, group: str) -> str:
        return _checked_name(
            f"{self.exchange}:{quote(topic, safe='')}:{quote(group, safe='')}", "queue name"
        )

    def _holding_queue(self, topic: str) -> str:
        return _checked_name(f"{self.unrouted}:{quote(topic, safe='')}", "queue name")

    async def _declare_exchanges(self, channel: _Channel) -> None:
        if self.exchanges_declared:
            return
        raw = channel.channel
        await channel.rpc(lambda cb: raw.exchange_declare(
            self.unrouted, exchange_type="direct", durable=True, auto_delete=self.auto_delete,
            callback=cb,
        ))
        await channel.rpc(lambda cb: raw.exchange_declare(
            self.exchange, exchange_type="topic", durable=True, auto_delete=self.auto_delete,
            arguments={"alternate-exchange": self.unrouted}, callback=cb,
        ))
        self.exchanges_declared = True

    async def _declare_holding(self, channel: _Channel, topic: str) -> tuple[str, int]:
        holding = self._holding_queue(topic)
        raw = channel.channel
        frame = await channel.rpc(lambda cb: raw.queue_declare(
            holding, durable=True, arguments=self.holding_arguments, callback=cb
        ))
        await channel.rpc(lambda cb: raw.queue_bind(
            holding, self.unrouted, routing_key=routing_key(topic), callback=cb
        ))
        return holding, int(frame.method.message_count)

    async def _ensure_topic(self, topic: str) -> None:
        if topic in self.topics:
            return
        assert self.topology_lock is not None
        async with self.topology_lock:
            if topic in self.topics:
                return
            channel = await self._own_channel("control")
            await self._declare_exchanges(channel)
            await self._declare_holding(channel, topic)
            self.topics.add(topic)

    async def ensure_group(self, topic: str, group: str) -> None:
        if (topic, group) in self.groups:
            return
        assert self.topology_lock is not None
        async with self.topology_lock:
            if (topic, group) in self.groups:
                return
            queue = self._queue(topic, group)
            key = _checked_name(routing_key(topic), "routing key")
            channel = await self._own_channel("control")
            raw = channel.channel
            await self._declare_exchanges(channel)
            await channel.rpc(lambda cb: raw.queue_declare(
                queue, durable=True, arguments=self.group_arguments, callback=cb
            ))
            holding, held = await self._declare_holding(channel, topic)
            if held:
                await self._move(channel, holding, queue)
            await channel.rpc(lambda cb: raw.queue_bind(
                queue, self.exchange, routing_key=key, callback=cb
            ))
            # Anything routed to the holding queue while the binding was being made.
            await self._move(channel, holding, queue)
            self.topics.add(topic)
            self.groups.add((topic, group))

    def _get_empty(self, channel: _Channel) -> None:
        waiter, channel.get_waiter = channel.get_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _get(self, channel: _Channel, queue: str) -> tuple[Any, Any, bytes] | None:
        """basic.get one message from ``queue``; None when it is empty."""
        future: asyncio.Future[Any] = self.loop.create_future()
        channel.watch(future)
        channel.get_waiter = future

        def got(raw: Any, method: Any, properties: Any, body: bytes) -> None:
            channel.get_waiter = None
            if not future.done():
                future.set_result((method, properties, body))

        try:
            channel.channel.basic_get(queue, got)
        except Exception as exc:
            raise _unavailable(exc) from exc
        result: tuple[Any, Any, bytes] | None = await future
        return result

    async def _move(self, channel: _Channel, source: str, target: str) -> None:
        """Move every message of ``source`` into ``target``: republish, confirm, then ack."""
        publisher = await self._own_channel("publisher")
        moved: list[tuple[int, asyncio.Future[None]]] = []
        try:
            while (got := await self._get(channel, source)) is not None:
                method, properties, body = got
                if properties.headers:
                    properties.headers.pop(_DELIVERY_COUNT, None)
                confirm = self._send(publisher, "", target, body, properties)
                moved.append((method.delivery_tag, confirm))
            for tag, confirm in moved:
                await confirm
                channel.channel.basic_ack(tag)
        except BaseException:
            # Closing the channel hands every message it got back to the holding queue.
            if channel.usable:
                channel.channel.close()
            raise

    async def purge(self, topic: str, group: str) -> int:
        await self.ensure_group(topic, group)
        # On the channel publish() writes to: the broker takes a channel's frames in order, so
        # what this process published before the purge is purged with it (on a quorum queue the
        # last unconfirmed ones can still come in after it: see Confirms above).
        channel = await self._own_channel("publisher" if self.owner.publisher_confirm else "sender")
        raw = channel.channel
        frame = await channel.rpc(
            lambda cb: raw.queue_purge(self._queue(topic, group), callback=cb)
        )
        dropped = 0
        feed = self.feeds.get((topic, group))
        if feed is not None and feed.channel is not None and feed.channel.usable:
            # Pushed to this process's consumer, taken by no pull: waiting as much as the rest.
            while feed.arrived:
                method, _, _ = feed.arrived.popleft()
                feed.channel.channel.basic_ack(method.delivery_tag)
                dropped += 1
        return int(frame.method.message_count) + dropped

    async def backlog(self, topic: str, group: str) -> int:
        """The group queue's ready messages, and those pushed to this process's consumer that no
        pull took (exact at rest; while messages are acked, one may count twice)."""
        await self.ensure_group(topic, group)
        # (A queue answers a count ahead of the messages still on their way in, even those
        # published before on the same channel: after unconfirmed publishes it can run short.)
        channel = await self._own_channel("control")
        raw = channel.channel
        queue = self._queue(topic, group)
        frame = await channel.rpc(lambda cb: raw.queue_declare(queue, passive=True, callback=cb))
        ready = int(frame.method.message_count)
        feed = self.feeds.get((topic, group))
        if feed is None or feed.channel is None or not feed.channel.usable:
            return ready
        # Deliveries the broker had under way to the consumer when it counted (no longer ready,
        # not arrived yet) reach us ahead of its answer to a later request on their channel.
        consuming = feed.channel.channel
        await feed.channel.rpc(lambda cb: consuming.basic_qos(prefetch_count=feed.qos,
                                                              callback=cb))
        return ready + len(feed.arrived)

    async def delete_group(self, topic: str, group: str) -> None:
        feed = self.feeds.pop((topic, group), None)
        if feed is not None and feed.channel is not None:
            raw_channel = feed.channel.channel
            self._drop_feed_channel(feed, RabbitMQUnavailable("the group was deleted"))
            if raw_channel.is_open:
                raw_channel.close()  # what it held goes back to the queue, deleted next
        self.groups.discard((topic, group))
        assert self.topology_lock is not None
        async with self.topology_lock:
            control = await self._own_channel("control")
            raw = control.channel
            await control.rpc(lambda cb: raw.queue_delete(self._queue(topic, group), callback=cb))

    # --- consuming ------------------------------------------------------------------------------

    async def _feed_channel(self, feed: _Feed) -> _Channel:
        if feed.channel is not None and feed.channel.usable:
            return feed.channel
        async with feed.open_lock:
            if feed.channel is None or not feed.channel.usable:
                await self._ready()
                channel = await self._open_channel()
                channel.channel.add_on_close_callback(
                    lambda raw, reason: self._feed_channel_closed(feed, channel, reason)
                )
                feed.channel, feed.qos = channel, 0
            return feed.channel

    def _feed_channel_closed(self, feed: _Feed, channel: _Channel, reason: BaseException) -> None:
        import pika.exceptions as px

        if feed.channel is channel:
            self._drop_feed_channel(feed, _unavailable(reason))
        if isinstance(reason, px.ChannelClosedByBroker) and reason.reply_code == 404:
            # The queue was deleted under us (expired, or by hand): declare it again next time.
            self.groups = {g for g in self.groups if self._queue(*g) != feed.queue}
        if not self.closing:
            log.warning("RabbitMQ closed the channel of %s: %s", feed.queue, reason)

    def _drop_feed_channel(self, feed: _Feed, error: BaseException) -> None:
        for timer in feed.held.values():
            timer.cancel()
        feed.held.clear()
        feed.kept.clear()
        feed.arrived.clear()  # the broker requeues them with the channel
        feed.consumer, feed.window = None, 0
        if feed.retire is not None:
            feed.retire.cancel()
            feed.retire = None
        if feed.channel is not None:
            feed.channel.closed(error)  # fails the waiting pulls too
        feed.channel, feed.qos = None, 0

    async def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        await self.ensure_group(topic, group)
        feed = self.feeds.get((topic, group))
        if feed is None:
            feed = self.feeds[(topic, group)] = _Feed(self._queue(topic, group))
        channel = await self._feed_channel(feed)
        max_messages = min(max_messages, _MAX_PREFETCH)
        feed.pulls += 1
        if feed.retire is not None:
            feed.retire.cancel()
            feed.retire = None
        try:
            if timeout > 0:
                got = await self._receive(feed, channel, max_messages, timeout)
            else:
                got = self._take_arrived(feed, max_messages)
                if len(got) < max_messages and feed.consumer is None:
                    # (A standing consumer is pushed what is ready, up to its prefetch.)
                    got += await self._take_ready(feed, channel, max_messages - len(got))
        finally:
            feed.pulls -= 1
            if not feed.pulls and feed.consumer is not None and feed.channel is channel:
                feed.retire = self.loop.call_later(_LINGER, self._retire, feed, channel)
        return [self._hand_out(feed, channel, lease, *message) for message in got]

    def _take_arrived(self, feed: _Feed, max_messages: int) -> list[tuple[Any, Any, bytes]]:
        arrived = feed.arrived
        return [arrived.popleft() for _ in range(min(max_messages, len(arrived)))]

    async def _take_ready(
        self, feed: _Feed, channel: _Channel, max_messages: int
    ) -> list[tuple[Any, Any, bytes]]:
        """Up to ``max_messages`` of what is ready now, without waiting."""
        got: list[tuple[Any, Any, bytes]] = []
        try:
            async with feed.consume_lock:  # one basic.get at a time on a channel
                while len(got) < max_messages and (message := await self._get(channel,
                                                                              feed.queue)):
                    if message[0].redelivered and not self.counts_deliveries:
                        method, properties, body = message
                        self._in_background(
                            self._recount(feed, channel, method.delivery_tag, properties, body)
                        )
                        continue
                    got.append(message)
        except BaseException:
            if channel.usable:
                for method, _, _ in got:
                    channel.channel.basic_nack(method.delivery_tag, requeue=True)
            raise
        return got

    async def _receive(
        self, feed: _Feed, channel: _Channel, max_messages: int, timeout: float
    ) -> list[tuple[Any, Any, bytes]]:
        """Up to ``max_messages`` pushed to the standing consumer, waiting up to ``timeout``."""
        if feed.consumer is None or feed.window < max_messages:
            await self._stand(feed, channel, max_messages)
        deadline = self.loop.time() + timeout
        while not feed.arrived:
            left = deadline - self.loop.time()
            if left <= 0:
                return []
            # A bare future and timer: asyncio.wait costs more than the rest of a pull.
            waiter: asyncio.Future[None] = channel.watch(self.loop.create_future())
            timer = self.loop.call_later(left, _finish, waiter)
            feed.waiters.add(waiter)
            try:
                await waiter  # the channel's loss fails it
            finally:
                feed.waiters.discard(waiter)
                timer.cancel()
        return self._take_arrived(feed, max_messages)

    async def _stand(self, feed: _Feed, channel: _Channel, window: int) -> None:
        """Start the group's consumer with a prefetch of ``window`` (replacing a smaller one)."""
        raw = channel.channel

        def on_message(_raw: Any, method: Any, properties: Any, body: bytes) -> None:
            if method.redelivered and not self.counts_deliveries:
                self._in_background(
                    self._recount(feed, channel, method.delivery_tag, properties, body)
                )
                return
            feed.arrived.append((method, properties, body))
            # The waiting pulls resume on the loop's next turn, after the rest of what this
            # read of the socket holds has arrived too.
            for waiter in feed.waiters:
                if not waiter.done():
                    waiter.set_result(None)

        async with feed.consume_lock:
            if feed.consumer is not None and feed.window >= window:
                return  # another pull started it meanwhile
            if feed.consumer is not None:
                # basic.qos applies to consumers started after it: replace the consumer.
                tag, feed.consumer = feed.consumer, None
                await self._cancel(channel, tag)
            if feed.qos != window:
                await channel.rpc(lambda cb: raw.basic_qos(prefetch_count=window, callback=cb))
                feed.qos = window
            frame = await channel.rpc(lambda cb: raw.basic_consume(
                feed.queue, on_message, callback=cb
            ))
            if feed.channel is channel:
                feed.consumer, feed.window = frame.method.consumer_tag, window

    async def _recount(
        self, feed: _Feed, channel: _Channel, tag: int, properties: Any, body: bytes
    ) -> None:
        """Requeue a message of a classic queue: publish it again with one attempt more, then ack
        the original delivery ``tag``.

        Classic queues only flag a redelivery, so a message goes back to the queue this way
        when it is nacked or its lease runs out, and when the broker redelivers one on its own
        (its consumer's connection closed). Between the two steps the message exists twice for
        a moment; should this process die then, it is delivered twice.
        """
        import pika

        headers = dict(properties.headers or {})
        headers[_ATTEMPT] = int(headers.get(_ATTEMPT, 1)) + 1
        again = pika.BasicProperties(
            delivery_mode=2, headers=headers, content_type=properties.content_type
        )
        try:
            publisher = await self._own_channel("publisher")
            await self._send(publisher, "", feed.queue, body, again)  # straight to this queue
        except Exception as exc:
            log.warning("could not count a redelivery of a message of %s (%s): it stays queued",
                        feed.queue, exc)
            if channel.usable:
                channel.channel.basic_nack(tag, requeue=True)
            return
        if channel.usable:
            channel.channel.basic_ack(tag)

    async def _cancel(self, channel: _Channel, consumer_tag: str) -> None:
        """Cancel a consumer, keeping the messages that arrive before cancel-ok.

        pika rejects (requeues) deliveries that reach a consumer it is cancelling, which would
        count as a delivery; re-admitting the consumer tag keeps them for the next pull instead.
        """
        raw = channel.channel

        def start(callback: Callable[[Any], None]) -> None:
            raw.basic_cancel(consumer_tag, callback=callback)
            cancelling = getattr(raw, "_cancelled", None)
            if isinstance(cancelling, set):
                cancelling.discard(consumer_tag)

        await channel.rpc(start)

    def _retire(self, feed: _Feed, channel: _Channel) -> None:
        """No pull came for a while: stop the consumer, give back what nobody took."""
        feed.retire = None
        if feed.pulls or feed.consumer is None or feed.channel is not channel:
            return
        tag, feed.consumer, feed.window = feed.consumer, None, 0
        if not channel.usable:
            return
        channel.channel.basic_cancel(tag)  # no-wait: pika requeues anything still arriving
        while feed.arrived:
            method, _, _ = feed.arrived.popleft()
            channel.channel.basic_nack(method.delivery_tag, requeue=True)

    def _hand_out(
        self, feed: _Feed, channel: _Channel, lease: float, method: Any, properties: Any,
        body: bytes,
    ) -> Delivery:
        tag: int = method.delivery_tag
        headers = dict(properties.headers or {})
        count = headers.pop(_DELIVERY_COUNT, None)
        recounted = headers.pop(_ATTEMPT, None)
        # Quorum queues count earlier deliveries; on classic queues _recount did.
        attempt = (
            int(count) + 1 if count is not None
            else int(recounted) if recounted is not None
            else 2 if method.redelivered else 1
        )
        feed.held[tag] = self.loop.call_later(lease, self._expire, feed, channel, tag)
        if not self.counts_deliveries:
            feed.kept[tag] = (properties, body)
        metadata = {str(k): _text(v) for k, v in headers.items()}
        return Delivery(f"{channel.epoch}.{tag}", body, attempt, metadata)

    def _expire(self, feed: _Feed, channel: _Channel, tag: int) -> None:
        """A lease ran out (or a nack delay passed): back to the queue, one delivery more."""
        if feed.held.pop(tag, None) is not None and feed.channel is channel and channel.usable:
            self._requeue(feed, channel, tag)

    def _requeue(self, feed: _Feed, channel: _Channel, tag: int) -> None:
        kept = feed.kept.pop(tag, None)
        if kept is None:  # a quorum queue counts the delivery itself
            channel.channel.basic_nack(tag, requeue=True)
        else:  # a classic queue: the copy carries the count
            self._in_background(self._recount(feed, channel, tag, *kept))

    def settle(self, topic: str, group: str, ids: list[str], how: str, seconds: float) -> None:
        """ack, nack (after ``seconds``) or extend (by ``seconds``) deliveries in hand."""
        feed = self.feeds.get((topic, group))
        channel = feed.channel if feed is not None else None
        if feed is None or channel is None or not channel.usable:
            return  # the channel they came on is gone: the broker has requeued them
        for delivery_id in ids:
            epoch, _, tag_text = delivery_id.partition(".")
            if epoch != str(channel.epoch) or not tag_text.isdigit():
                continue  # from an earlier connection, or not ours
            tag = int(tag_text)
            timer = feed.held.pop(tag, None)
            if timer is None:
                continue  # already settled, or its lease ran out
            timer.cancel()
            if how == "ack":
                feed.kept.pop(tag, None)
                channel.channel.basic_ack(tag)
            elif how == "nack" and seconds <= 0:
                self._requeue(feed, channel, tag)
            else:  # a delayed nack, or a lease extension: the same timer, with a new deadline
                feed.held[tag] = self.loop.call_later(seconds, self._expire, feed, channel, tag)

    # --- closing --------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        for task in list(self.background):
            task.cancel()
        self.closing = True
        if self.maintainer is not None:
            self.maintainer.cancel()
        connection = self.connection
        if connection is not None and connection.is_open:
            closed: asyncio.Future[None] = self.loop.create_future()

            def on_close(connection: Any, reason: BaseException) -> None:
                if not closed.done():
                    closed.set_result(None)

            connection.add_on_close_callback(on_close)
            connection.close()
            try:
                async with asyncio.timeout(5):
                    await closed
            except TimeoutError:
                log.warning("RabbitMQ at %s did not close the connection in time",
                            self.owner.address)
        self._forget_connection(RabbitMQUnavailable("the component is closed"))

    def close(self) -> None:
        try:
            self.run(self._shutdown(), self.owner.publish_timeout + 10.0)
        except Exception:  # closing must not fail: the loop goes away regardless
            log.exception("closing the RabbitMQ connection failed")
        finally:
            self.runner.close()
