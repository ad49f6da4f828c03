"""The RabbitMQ and NATS JetStream pub/sub components against raw pika and nats-py, in one run.

Run: python bench/rabbitmq_nats_vs_raw.py [--messages M] [--nats-messages N] [--rounds R]
Uses the local RabbitMQ (amqp://guest:guest@127.0.0.1:5672/) and NATS (nats://127.0.0.1:4222)
with exchange, queue and stream names of its own, removed at the end. Prints messages/s through
capa and through the raw client and the ratio of their times (capa/raw; target: at most 1.20).

Each cycle publishes a chunk of messages one by one (JSON-encoding each), each waiting for the
server's confirmation, then consumes them in batches of 10, decoding and acknowledging one by one:
- RabbitMQ, raw pika (blocking): basic_publish on a channel in confirm mode (persistent) through
  a topic exchange into a durable quorum queue (capa's topology), then a long-lived consumer with
  prefetch 10 and basic_ack per message.
  capa: PubSub.publish / pull(max_messages=10) / Message.ack on the rabbitmq component (topic
  exchange, quorum queue per group, a consumer per pull).
- NATS, raw nats-py (asyncio, in the main thread): js.publish, then pull-subscription
  fetch(10) and msg.ack(). capa: the same API calls on the nats component (its own I/O thread).
The "raw payload" rows publish with raw=True (bytes on the wire as on the raw side); the
"CloudEvent" rows add the envelope the API sends by default, for information.

Noise: within each round the two sides take turns in chunks (which one goes first alternates),
so drift on a shared machine hits both alike; figures are medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable

from harness import compare  # bench/ is on sys.path when run as a script

from capa_core import Runtime

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
NATS_URL = "nats://127.0.0.1:4222"
VALUE = {"user": 42, "name": "Ada", "roles": ["admin", "dev"], "active": True}
BATCH = 10

Cycle = Callable[[int], object]  # publishes and consumes n messages


def capa_cycle(runtime: Runtime, component: str, envelope: bool) -> Cycle:
    bus = runtime.pubsub(component)

    def cycle(n: int) -> object:
        for _ in range(n):
            bus.publish("orders", VALUE, raw=not envelope)
        done = 0
        while done < n:
            for message in bus.pull("orders", group="billing", max_messages=BATCH, timeout=2):
                message.ack()
                done += 1
        return done

    return cycle


# --- RabbitMQ ------------------------------------------------------------------------------------


class RawRabbitMQ:
    """pika, blocking: confirmed persistent publishes and a prefetch-10 consumer."""

    def __init__(self, queue: str) -> None:
        import pika

        self.queue = queue
        self.exchange = queue  # the same topology as capa's: a topic exchange before the queue
        self.connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL + "%2F"))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        self.channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        self.channel.queue_bind(queue, self.exchange, routing_key="orders")
        self.channel.basic_qos(prefetch_count=BATCH)
        self.properties = pika.BasicProperties(
            delivery_mode=2, content_type="application/json",
            headers={"content-type": "application/json"},
        )
        self.deliveries = self.channel.consume(queue, inactivity_timeout=5)

    def cycle(self, n: int) -> object:
        for _ in range(n):
            self.channel.basic_publish(self.exchange, "orders", json.dumps(VALUE).encode(),
                                       self.properties)
        for _ in range(n):
            method, _, body = next(self.deliveries)
            json.loads(body)
            self.channel.basic_ack(method.delivery_tag)
        return n

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.channel.cancel()
            self.channel.queue_delete(self.queue)
            self.channel.exchange_delete(self.exchange)
        self.connection.close()


# --- NATS ----------------------------------------------------------------------------------------


class RawNats:
    """nats-py on an event loop of the main thread: js.publish, fetch(10), ack."""

    def __init__(self, stream: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.stream = stream
        self.loop.run_until_complete(self._open())

    async def _open(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, StreamConfig

        self.client = await nats.connect(NATS_URL)
        self.js = self.client.jetstream()
        await self.js.add_stream(StreamConfig(name=self.stream, subjects=[f"{self.stream}.>"]))
        self.subject = f"{self.stream}.orders"
        self.pull = await self.js.pull_subscribe(
            self.subject, "billing", stream=self.stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=20),
        )

    async def _cycle(self, n: int) -> int:
        for _ in range(n):
            await self.js.publish(self.subject, json.dumps(VALUE).encode(),
                                  headers={"content-type": "application/json"})
        done = 0
        while done < n:
            for message in await self.pull.fetch(BATCH, timeout=2):
                json.loads(message.data)
                await message.ack()
                done += 1
        return done

    def cycle(self, n: int) -> object:
        return self.loop.run_until_complete(self._cycle(n))

    def close(self) -> None:
        async def finish() -> None:
            with contextlib.suppress(Exception):
                await self.js.delete_stream(self.stream)
            await self.client.close()

        self.loop.run_until_complete(finish())
        self.loop.close()


def delete_nats_stream(name: str) -> None:
    async def delete() -> None:
        import nats

        client = await nats.connect(NATS_URL)
        with contextlib.suppress(Exception):
            await client.jetstream().delete_stream(name)
        await client.close()

    asyncio.run(delete())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="RabbitMQ messages per round")
    parser.add_argument("--nats-messages", type=int, default=1_000,
                        help="NATS messages per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    token = uuid.uuid4().hex[:8]
    stream = f"capa-bench-{token}"
    runtime = Runtime.from_mapping({
        "capa": {"app_id": "bench", "default_url": "memory://"},
        "pubsub": {
            # Queues expire a while after the run, so an interrupted run leaves nothing behind.
            "rabbitmq": {"url": AMQP_URL, "exchange": f"capa.bench.{token}", "queueExpiry": 120},
            "nats": {"url": NATS_URL, "stream": stream},
        },
    })
    raw_rabbitmq = RawRabbitMQ(f"capa.bench.raw.{token}")
    raw_nats = RawNats(f"capa-bench-raw-{token}")
    try:
        for name in ("rabbitmq", "nats"):  # declare the groups before timing
            runtime.pubsub(name).pull("orders", group="billing", timeout=0.01)
        cases: list[tuple[str, Cycle, Cycle, int, int]] = [
            ("rabbitmq publish+consume, raw payload", capa_cycle(runtime, "rabbitmq", False),
             raw_rabbitmq.cycle, args.messages, 20),
            ("rabbitmq publish+consume, CloudEvent", capa_cycle(runtime, "rabbitmq", True),
             raw_rabbitmq.cycle, args.messages, 20),
            ("nats publish+consume, raw payload", capa_cycle(runtime, "nats", False),
             raw_nats.cycle, args.nats_messages, 50),
            ("nats publish+consume, CloudEvent", capa_cycle(runtime, "nats", True),
             raw_nats.cycle, args.nats_messages, 50),
        ]
        for _, capa, raw, _, chunk in cases:  # warm up connections, channels, consumers
            capa(chunk)
            raw(chunk)
        print(f"RabbitMQ {AMQP_URL}, NATS {NATS_URL}; {args.rounds} rounds, medians")
        print(f"{'operation':<40}{'capa msg/s':>12}{'raw msg/s':>12}{'ratio':>8}")
        for name, capa, raw, total, chunk in cases:
            capa_rate, raw_rate, ratio = compare(capa, raw, total, chunk, args.rounds)
            print(f"{name:<40}{capa_rate:>12,.0f}{raw_rate:>12,.0f}{ratio:>8.2f}", flush=True)
    finally:
        runtime.close()
        raw_rabbitmq.close()
        raw_nats.close()
        delete_nats_stream(stream)


if __name__ == "__main__":
    main()
