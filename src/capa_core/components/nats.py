"""Pub/sub on NATS JetStream through nats-py: one stream per component, a pull consumer per group.

URL ``nats://[user:password@]host:4222`` (``tls://`` for TLS; several servers separated by
commas), or Dapr's metadata ``natsURL``. Other metadata: ``stream`` (Dapr: ``streamName``;
default ``capa-<component name>``), ``subjectPrefix`` (default: the stream name), ``storage``
(``file``, the default, or ``memory``; Dapr's ``memoryStorage: true`` is the same), ``maxAge``
(seconds a message is kept; default forever), ``replicas`` (default 1), ``ackWait`` (the lease a
new consumer starts with, default 20 s), ``maxAckPending`` (deliveries a group may have in hand;
default unlimited), ``connectTimeout`` (default 5 s), ``requestTimeout`` (how long a publish waits
for JetStream's acknowledgement, default 5 s) and ``name`` (the client's connection name).

Topology. The component's stream holds the subjects ``<prefix>.>`` with limits retention, so
every group can read every message. Topic T is the subject ``<prefix>.T`` (characters NATS gives
a meaning to are %-escaped). Group G of T is a durable pull consumer filtered on that subject,
with explicit acks, ``ack_wait`` = the lease and no delivery limit: only the client layer
(capa_core/pubsub.py) dead-letters, after max_attempts. The first group of a topic starts with
every stored message of the topic (DeliverPolicy.ALL: what was published before any group
existed); later groups start with what is published after them (DeliverPolicy.NEW).

Leases are JetStream's: an unacknowledged delivery comes back after ``ack_wait`` with one more
``num_delivered`` (Delivery.attempt), also when its process died; extend() sends "in progress",
nack(delay) a NAK with that delay. A pull whose lease differs from the consumer's ``ack_wait``
updates the consumer first. A delivery's id is its JetStream reply subject, so any process can
settle it; acks are sent without waiting for the I/O thread.

Pulling. A pull first asks for up to ``max_messages`` without waiting; when nothing is there it
waits up to ``timeout`` for one message, then takes whatever else is ready. So no pull request is
left behind on the server to swallow messages after the call returned. (nats-py's fetch(batch,
timeout) waits for a full batch until the timeout once it has to wait at all, so the pull requests
are made here, on the same JetStream API.)

Threading. nats-py is asyncio: the connection lives on a private event loop owned by the
component. A calling thread that finds the loop idle runs it for the length of its call; one that
finds it busy hands its coroutine over and waits; a daemon helper thread of the component runs
the loop for handed-over work and, between calls, turns it over every few milliseconds for pings
and timers (capa_core/components/_eventloop.py; a plain loop thread bridged with
run_coroutine_threadsafe costs two thread switches per call, which a busy machine makes
expensive). nats-py reconnects by itself; calls that fail meanwhile raise a transient error
(retried by the dispatch point, then ComponentUnavailable).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

from ..errors import CapaError, SettingsError
from ..spi import PubSubComponent, duration
from ..types import Delivery
from ._eventloop import PrivateLoop

log = logging.getLogger("capa_core.nats")

T = TypeVar("T")

_STREAM_NAME = re.compile(r"^[^\s.*>/\\]{1,200}$")
_SUBJECT_TOKENS = re.compile(r"^[^\s.*>]+(\.[^\s.*>]+)*$")
_ACK_PREFIX = "$JS.ACK."
_END_OF_BATCH = {"404", "408"}  # no messages / request expired: the pull request is over


class NatsUnavailable(ConnectionError):
    """The NATS server could not be reached, or did not answer in time."""


class NatsRefused(Exception):
    """The server refused a request for a reason retrying cannot fix (settings, permissions)."""

    def __init__(self, what: str, description: str) -> None:
        super().__init__(f"{what}: {description}")
        self.what, self.description = what, description


def subject_token(topic: str) -> str:
    """The subject tail of a topic: dots kept as levels, anything NATS reads specially escaped."""
    escaped = quote(topic, safe=".")
    if all(escaped.split(".")):
        return escaped
    return quote(topic, safe="").replace(".", "%2E")  # empty levels: one escaped token


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:40]


def durable_name(topic: str, group: str) -> str:
    """A consumer name valid in NATS, readable, and unique per (topic, group)."""
    digest = hashlib.sha1(f"{topic}\0{group}".encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{_slug(group)}-{_slug(topic)}-{digest}"


class NatsPubSub(PubSubComponent):
    kind = "nats"
    transient_errors = (NatsUnavailable,)

    def __init__(self, name: str, metadata: Mapping[str, Any], *, source: str = "") -> None:
        super().__init__(name, metadata, source=source)
        self.servers = self._servers()
        self.stream = self.option("stream", str, f"capa-{_slug(name)}", "streamName")
        if not _STREAM_NAME.match(self.stream):
            raise SettingsError(
                self.source, "stream", f"{self.stream!r} is not a valid JetStream stream name",
                "use 1 to 200 characters without spaces, '.', '*', '>', '/' or '\\'",
            )
        self.prefix = self.option("subjectPrefix", str, self.stream)
        if not _SUBJECT_TOKENS.match(self.prefix):
            raise SettingsError(
                self.source, "subjectPrefix", f"{self.prefix!r} is not a valid subject prefix",
                "use dot-separated words without spaces, '*' or '>'",
            )
        memory = self.option("memoryStorage", bool, False)
        self.storage = self.option("storage", str, "memory" if memory else "file").lower()
        if self.storage not in {"file", "memory"}:
            raise SettingsError(
                self.source, "storage", f"{self.storage!r} is not a JetStream storage type",
                'set storage to "file" or "memory"',
            )
        self.max_age = self.option("maxAge", duration, 0.0)
        self.replicas = self.option("replicas", int, 1)
        self.ack_wait = self.option("ackWait", duration, 20.0)
        self.max_ack_pending = self.option("maxAckPending", int, -1)
        self.connect_timeout = self.option("connectTimeout", duration, 5.0)
        self.request_timeout = self.option("requestTimeout", duration, 5.0)
        self.client_name = self.option("name", str, f"capa {name}")
        for key, value in (("replicas", self.replicas), ("ackWait", self.ack_wait),
                           ("connectTimeout", self.connect_timeout),
                           ("requestTimeout", self.request_timeout)):
            if value <= 0:
                raise SettingsError(self.source, key, f"{value} must be positive",
                                    f"set {key} above zero")
        self._link: _Link | None = None
        self._link_lock = threading.Lock()
        self._subjects: dict[str, str] = {}

    def _servers(self) -> list[str]:
        url = self.option("url", str, "", "natsURL")
        if not url:
            raise SettingsError(
                self.source, "url", "no server address given",
                'set url = "nats://host:4222" (or Dapr\'s natsURL)',
            )
        servers = [s.strip() for s in url.split(",") if s.strip()]
        for server in servers:
            try:
                parts = urlsplit(server)
                parts.port  # noqa: B018 - raises ValueError on a bad port
            except ValueError as exc:
                raise SettingsError(
                    self.source, "url", f"{server!r} cannot be read: {exc}",
                    "write it as nats://host:4222",
                ) from None
            if parts.scheme.lower() not in {"nats", "tls", "ws", "wss"} or not parts.hostname:
                raise SettingsError(
                    self.source, "url", f"{server!r} is not a NATS URL",
                    "write it as nats://[user:password@]host:4222 (or tls://)",
                )
        return servers

    @property
    def address(self) -> str:
        """The servers, for messages, without credentials."""
        return ", ".join(
            f"{p.scheme}://{p.hostname}:{p.port or 4222}" for p in map(urlsplit, self.servers)
        )

    def subject(self, topic: str) -> str:
        subject = self._subjects.get(topic)
        if subject is None:
            subject = self._subjects[topic] = f"{self.prefix}.{subject_token(topic)}"
        return subject

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
            self.connect_timeout + 2 * self.request_timeout + 5,
        )

    def bulk_publish(
        self, topic: str, entries: Sequence[tuple[str, bytes, Mapping[str, str]]]
    ) -> dict[str, Exception]:
        """Publish all entries at once and wait for their acknowledgements together."""
        if not entries:
            return {}
        outcomes = self._run(
            lambda link: link.publish(topic, [(data, meta) for _, data, meta in entries],
                                      collect=True),
            self.connect_timeout + 2 * self.request_timeout + 5,
        )
        failed: dict[str, Exception] = {}
        for (entry_id, _, _), outcome in zip(entries, outcomes, strict=True):
            if outcome is not None:
                failed[entry_id] = self.translate_error(outcome) or outcome
        return failed

    def ensure_group(self, topic: str, group: str) -> None:
        link = self._link
        if link is not None and (topic, group) in link.groups:
            return  # made by this connection already (the client asks before every pull)
        self._run(lambda link: link.ensure_group(topic, group),
                  self.connect_timeout + 4 * self.request_timeout + 5)

    def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        if max_messages < 1:
            return []
        return self._run(
            lambda link: link.pull(topic, group, max_messages, timeout, lease),
            self.connect_timeout + 6 * self.request_timeout + timeout + 5,
        )

    def ack(self, topic: str, group: str, ids: Sequence[str]) -> None:
        self._settle(ids, b"+ACK")

    def nack(self, topic: str, group: str, ids: Sequence[str], delay: float) -> None:
        if delay > 0:
            self._settle(ids, b"-NAK " + json.dumps({"delay": int(delay * 1e9)}).encode())
        else:
            self._settle(ids, b"-NAK")

    def extend(self, topic: str, group: str, ids: Sequence[str], lease: float) -> None:
        self._settle(ids, b"+WPI")  # resets the ack timer to the consumer's ack_wait (the lease)

    def _settle(self, ids: Sequence[str], payload: bytes) -> None:
        ours = [i for i in ids if i.startswith(_ACK_PREFIX)]
        link = self._link
        if ours and link is not None:
            link.settle_soon(ours, payload)

    def ping(self) -> None:
        self._run(lambda link: link.ping(), self.connect_timeout + self.request_timeout + 5)

    def delete_group(self, topic: str, group: str) -> None:
        self._run(lambda link: link.delete_group(topic, group),
                  self.connect_timeout + self.request_timeout + 5)

    def purge(self, topic: str, group: str) -> int:
        """Acknowledge, and so drop, every message waiting for ``group``; return how many."""
        return self._run(lambda link: link.purge(topic, group),
                         self.connect_timeout + 10 * self.request_timeout + 30)

    def backlog(self, topic: str, group: str) -> int:
        return self._run(lambda link: link.backlog(topic, group),
                         self.connect_timeout + self.request_timeout + 30)

    def translate_error(self, exc: Exception) -> CapaError | None:
        if isinstance(exc, NatsRefused):
            key = "url" if exc.what == "connection" else "stream"
            fix = (
                "check the credentials in the URL and the user's permissions"
                if key == "url"
                else "use another stream name or subjectPrefix, or fix the existing stream"
            )
            return SettingsError(
                self.source, key,
                f"NATS at {self.address} refused the {exc.what}: {exc.description}", fix,
            )
        return None

    def close(self) -> None:
        with self._link_lock:
            link, self._link = self._link, None
        if link is not None:
            link.close()


def _failure(exc: BaseException, what: str) -> BaseException:
    """The error callers get for a nats-py failure: refusals stay, the rest is transient."""
    import nats.errors
    import nats.js.errors

    if isinstance(exc, NatsRefused | NatsUnavailable):
        return exc
    if isinstance(exc, nats.js.errors.ServiceUnavailableError | nats.js.errors.NotFoundError):
        return NatsUnavailable(f"{what}: {exc}")
    if isinstance(exc, nats.js.errors.APIError):
        return NatsRefused(what, str(exc.description or exc))
    if isinstance(exc, nats.errors.AuthorizationError):
        return NatsRefused("connection", str(exc) or "authorization violation")
    if isinstance(exc, nats.errors.Error | OSError | TimeoutError):
        return NatsUnavailable(f"{what}: {type(exc).__name__}: {exc}")
    return exc


class _Link:
    """The component's NATS connection, on the component's private event loop."""

    def __init__(self, owner: NatsPubSub) -> None:
        self.owner = owner
        self.stream = owner.stream
        self.runner = PrivateLoop(f"capa-nats-{owner.name}", NatsUnavailable)
        self.loop = self.runner.loop
        self.client: Any = None
        self.jetstream: Any = None
        self.stream_ready = False
        self.closing = False
        self.settling: set[asyncio.Task[None]] = set()
        self.inboxes: list[tuple[Any, Any]] = []  # (connection, pull subscription) not in use
        self.last_error: Exception | None = None
        self.groups: dict[tuple[str, str], str] = {}  # (topic, group) -> consumer name
        self.ack_waits: dict[str, float] = {}  # consumer name -> ack_wait known to be set
        self.connect_lock: asyncio.Lock | None = None
        self.topology_lock: asyncio.Lock | None = None
        self.run(self._start(), 10.0)

    # --- crossing threads ---------------------------------------------------------------------

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coroutine`` on the connection's loop and wait for its result."""
        return self.runner.run(coroutine, timeout)

    async def _start(self) -> None:
        self.connect_lock = asyncio.Lock()
        self.topology_lock = asyncio.Lock()

    # --- connecting -----------------------------------------------------------------------------

    async def ping(self) -> None:
        """A PING the server answers (the connection is opened first if need be)."""
        client = await self._connection()
        try:
            await client.flush(timeout=self.owner.request_timeout)
        except Exception as exc:
            raise _failure(exc, "ping") from exc

    async def _connection(self) -> Any:
        """The connection, opened on first use; nats-py keeps it up (reconnecting) after that."""
        if self.client is not None and not self.client.is_closed:
            return self.client
        assert self.connect_lock is not None
        async with self.connect_lock:
            if self.client is not None and not self.client.is_closed:
                return self.client
            from nats.aio.client import Client

            async def on_error(exc: Exception) -> None:
                self.last_error = exc
                log.warning("NATS at %s: %s", self.owner.address, exc)

            async def on_disconnect() -> None:
                if self.closing:
                    return
                log.warning("lost the connection to NATS at %s", self.owner.address)

            async def on_reconnect() -> None:
                log.warning("reconnected to NATS at %s", self.owner.address)

            client = Client()
            try:
                # nats-py retries a first connection as often as reconnections (forever, here):
                # bound it, so a wrong address fails in connectTimeout.
                async with asyncio.timeout(self.owner.connect_timeout + 1):
                    await client.connect(
                        self.owner.servers,
                        name=self.owner.client_name,
                        connect_timeout=max(1, round(self.owner.connect_timeout)),
                        allow_reconnect=True,
                        max_reconnect_attempts=-1,
                        reconnect_time_wait=1,
                        error_cb=on_error,
                        disconnected_cb=on_disconnect,
                        reconnected_cb=on_reconnect,
                    )
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    await client.close()
                if isinstance(exc, TimeoutError):
                    raise NatsUnavailable(
                        f"connection: cannot reach NATS at {self.owner.address}: "
                        f"{self.last_error or 'no answer'}"
                    ) from None
                if isinstance(exc, Exception):
                    raise _failure(exc, "connection") from exc
                raise
            self.client, self.jetstream = client, client.jetstream(
                timeout=self.owner.request_timeout
            )
            return client

    # --- topology -------------------------------------------------------------------------------

    async def _ensure_stream(self) -> Any:
        await self._connection()
        js = self.jetstream
        if self.stream_ready:
            return js
        import nats.js.errors
        from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

        wanted = f"{self.owner.prefix}.>"
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            config = StreamConfig(
                name=self.stream,
                subjects=[wanted],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.MEMORY if self.owner.storage == "memory" else StorageType.FILE,
                max_age=self.owner.max_age or None,
                num_replicas=self.owner.replicas,
                discard=DiscardPolicy.OLD,
                description=f"capa pub/sub component {self.owner.name}",
            )
            try:
                info = await js.add_stream(config)
            except nats.js.errors.BadRequestError as refused:
                try:  # made meanwhile by another process?
                    info = await js.stream_info(self.stream)
                except nats.js.errors.NotFoundError:
                    raise NatsRefused(
                        f"stream {self.stream}", str(refused.description or refused)
                    ) from refused
        subjects = list(info.config.subjects or [])
        if wanted not in subjects and ">" not in subjects:
            raise NatsRefused(
                f"stream {self.stream}",
                f"it exists with subjects {subjects}, which do not include {wanted}",
            )
        self.stream_ready = True
        return js

    async def ensure_group(self, topic: str, group: str) -> str:
        """The consumer of (topic, group), made when missing."""
        durable = self.groups.get((topic, group))
        if durable is not None:
            return durable
        assert self.topology_lock is not None
        async with self.topology_lock:
            durable = self.groups.get((topic, group))
            if durable is not None:
                return durable
            try:
                durable = await self._make_consumer(topic, group)
            except Exception as exc:
                raise _failure(exc, f"consumer of {topic}/{group}") from exc
            self.groups[(topic, group)] = durable
            return durable

    async def _make_consumer(self, topic: str, group: str) -> str:
        import nats.js.errors
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        js = await self._ensure_stream()
        durable = durable_name(topic, group)
        subject = self.owner.subject(topic)
        try:
            info = await js.consumer_info(self.stream, durable)
            self.ack_waits[durable] = float(info.config.ack_wait or 0)
            return durable
        except nats.js.errors.NotFoundError:
            pass
        # The first group of a topic takes what was published before any group existed.
        existing = await js.consumers_info(self.stream)
        first = not any(c.config.filter_subject == subject for c in existing)
        config = ConsumerConfig(
            durable_name=durable,
            description=f"capa group {group!r} of topic {topic!r}",
            deliver_policy=DeliverPolicy.ALL if first else DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.owner.ack_wait,
            max_deliver=-1,
            max_ack_pending=self.owner.max_ack_pending,
            filter_subject=subject,
        )
        try:
            info = await js.add_consumer(self.stream, config)
        except nats.js.errors.BadRequestError:
            info = await js.consumer_info(self.stream, durable)  # made meanwhile elsewhere
        self.ack_waits[durable] = float(info.config.ack_wait or 0)
        return durable

    async def _lease(self, topic: str, group: str, durable: str, lease: float) -> None:
        """Make the consumer's ack_wait the pull's lease (once per lease change)."""
        if abs(self.ack_waits.get(durable, 0.0) - lease) < 1e-3:
            return
        import nats.js.errors

        assert self.topology_lock is not None
        async with self.topology_lock:
            js = self.jetstream
            try:
                info = await js.consumer_info(self.stream, durable)
                config = info.config
                config.ack_wait = lease
                await js.add_consumer(self.stream, config)
            except nats.js.errors.NotFoundError:
                self.groups.pop((topic, group), None)  # deleted under us: make it again
                raise NatsUnavailable(f"the consumer of {topic}/{group} disappeared") from None
            except Exception as exc:
                raise _failure(exc, f"consumer of {topic}/{group}") from exc
            self.ack_waits[durable] = lease

    # --- publishing -----------------------------------------------------------------------------

    async def publish(
        self, topic: str, entries: list[tuple[bytes, Mapping[str, str]]], collect: bool = False
    ) -> list[Exception | None]:
        try:
            js = await self._ensure_stream()
        except Exception as exc:
            raise _failure(exc, "stream") from exc
        subject = self.owner.subject(topic)

        async def one(body: bytes, metadata: Mapping[str, str]) -> None:
            await js.publish(subject, body, headers=dict(metadata) or None)

        if len(entries) == 1 and not collect:
            try:
                await one(*entries[0])
            except Exception as exc:
                raise _failure(exc, f"publish to {topic}") from exc
            return [None]
        results = await asyncio.gather(*(one(b, m) for b, m in entries), return_exceptions=True)
        outcomes: list[Exception | None] = []
        for result in results:
            if isinstance(result, BaseException):
                error = _failure(result, f"publish to {topic}")
                outcomes.append(error if isinstance(error, Exception) else NatsUnavailable(
                    f"publish to {topic} was interrupted"))
            else:
                outcomes.append(None)
        if not collect:
            for outcome in outcomes:
                if outcome is not None:
                    raise outcome
        return outcomes

    # --- consuming ------------------------------------------------------------------------------

    async def _next(self, durable: str, batch: int, expires: float | None) -> list[Any]:
        """One pull request: up to ``batch`` messages, now (``expires`` None) or within it."""
        client = await self._connection()
        # JetStream sends the messages with their own subjects: only a subscription of the
        # request's own inbox tells which request they answer. One ends each request it makes
        # (a full batch, or a status), so it can serve the next one.
        owner, subscription = self.inboxes.pop() if self.inboxes else (None, None)
        if subscription is None or owner is not client:
            subscription = await client.subscribe(client.new_inbox())
        reusable = False
        request: dict[str, Any] = {"batch": batch}
        if expires is None:
            request["no_wait"] = True
        else:
            request["expires"] = max(int(expires * 1e9), 1_000_000)
        got: list[Any] = []
        try:
            await client.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{durable}",
                json.dumps(request).encode(), reply=subscription.subject,
            )
            # The server ends the request itself (a message count, or a 404/408 status); the
            # margin only covers a server that went away meanwhile.
            async with asyncio.timeout((expires or 0) + self.owner.request_timeout):
                while len(got) < batch:
                    message = await subscription.next_msg(timeout=None)
                    # Deliveries carry an ack subject; status messages do not.
                    status = None if message.reply else (message.headers or {}).get("Status")
                    if status is None:
                        got.append(message)
                    elif status in _END_OF_BATCH:
                        break
                    elif status != "100":  # 100: idle heartbeat
                        description = (message.headers or {}).get("Description", "")
                        raise NatsUnavailable(f"pull from {durable}: {status} {description}")
            reusable = True
        except TimeoutError:
            if not got:
                raise NatsUnavailable(
                    f"NATS at {self.owner.address} did not answer a pull from {durable}"
                ) from None
        except BaseException as exc:
            for message in got:  # give back what came before the failure
                with contextlib.suppress(Exception):
                    await client.publish(message.reply, b"-NAK")
            if isinstance(exc, Exception):
                raise _failure(exc, f"pull from {durable}") from exc
            raise
        finally:
            if reusable:
                self.inboxes.append((client, subscription))
            else:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
        return got

    async def pull(
        self, topic: str, group: str, max_messages: int, timeout: float, lease: float
    ) -> list[Delivery]:
        durable = await self.ensure_group(topic, group)
        await self._lease(topic, group, durable, lease)
        got = await self._next(durable, max_messages, None)
        if not got and timeout > 0:
            got = await self._next(durable, 1, timeout)
            if got and max_messages > 1:
                got += await self._next(durable, max_messages - 1, None)
        return [
            Delivery(m.reply, m.data, int(m.metadata.num_delivered), dict(m.headers or {}))
            for m in got
        ]

    def settle_soon(self, ids: list[str], payload: bytes) -> None:
        """Send acks, naks or progress on the loop's next run, without waiting for it.

        JetStream does not answer them; a burst goes out in one write, and close() flushes
        what is left.
        """
        self.runner.soon(self._settle, ids, payload)

    def _settle(self, ids: list[str], payload: bytes) -> None:
        client = self.client
        if client is None or client.is_closed:
            return  # the deliveries come back after their lease

        async def send() -> None:
            try:
                for reply in ids:
                    await client.publish(reply, payload)
            except Exception as exc:
                log.warning("could not settle %d NATS deliveries: %s", len(ids), exc)

        task = self.loop.create_task(send())
        self.settling.add(task)
        task.add_done_callback(self.settling.discard)

    async def delete_group(self, topic: str, group: str) -> None:
        import nats.js.errors

        self.groups.pop((topic, group), None)
        durable = durable_name(topic, group)
        self.ack_waits.pop(durable, None)
        js = await self._ensure_stream()
        try:
            await js.delete_consumer(self.stream, durable)
        except nats.js.errors.NotFoundError:
            pass  # never made, or deleted already
        except Exception as exc:
            raise _failure(exc, f"consumer of {topic}/{group}") from exc

    async def backlog(self, topic: str, group: str) -> int:
        """What the group's consumer has not delivered yet (JetStream's num_pending)."""
        durable = await self.ensure_group(topic, group)
        try:
            info = await self.jetstream.consumer_info(self.stream, durable)
        except Exception as exc:
            raise _failure(exc, f"consumer of {topic}/{group}") from exc
        return int(info.num_pending)

    async def purge(self, topic: str, group: str) -> int:
        durable = await self.ensure_group(topic, group)
        waiting = await self.backlog(topic, group)
        dropped = 0
        while dropped < waiting:
            got = await self._next(durable, min(256, waiting - dropped), None)
            if not got:
                break
            for message in got:
                await self.client.publish(message.reply, b"+ACK")
            dropped += len(got)
        await self.client.flush(self.owner.request_timeout)
        return dropped

    # --- closing --------------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        self.closing = True
        await asyncio.sleep(0)  # settlements queued before close() start first
        if self.settling:
            await asyncio.wait(self.settling, timeout=5)
        client, self.client = self.client, None
        if client is not None and not client.is_closed:
            try:
                async with asyncio.timeout(5):
                    await client.flush()  # acks sent without waiting go out before the end
                    await client.close()
            except Exception as exc:  # closing must not fail
                log.warning("closing the NATS connection failed: %s", exc)

    def close(self) -> None:
        try:
            self.run(self._shutdown(), 10.0)
        except Exception:  # closing must not fail: the loop goes away regardless
            log.exception("closing the NATS connection failed")
        finally:
            self.runner.close()
