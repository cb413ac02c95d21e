"""A service's resources, each a cleanup context: opened in order at start-up, closed in reverse at
shutdown (aiohttp's `cleanup_ctx`).

    database (pool, migrations) → broker connection → messaging (topology, outbox relay, consumer)

On SIGTERM the consumer stops taking messages and finishes the ones in hand (commit, then ack), the
relay stops, and the connections close.
"""

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiohttp import web
from yarl import URL

from shared.app_keys import BROKER, DB_POOL, MESSAGING_METRICS, OUTBOX
from shared.broker import BROKER_UNAVAILABLE, connect_broker
from shared.bus_contract import bus
from shared.config import DatabaseConfig, ServiceConfig
from shared.consumer import Consumer, HandlerTable
from shared.db import apply_migrations, create_pool
from shared.metrics import MessagingMetrics
from shared.relay import OutboxRelay
from shared.retry import retry_until_deadline
from shared.topology import ConsumerQueues, declare_topology, queue_depths, queues_for, receivers_of

log = structlog.get_logger("service")
T = TypeVar("T")


def database(
    config: DatabaseConfig, migrations: list[Path]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The process's pool, under DB_POOL, with its migrations applied first."""

    async def database(app: web.Application) -> AsyncIterator[None]:
        pool = await create_pool(
            config.database_url.value,
            max_size=config.database_pool_size,
            startup_timeout=config.startup_timeout,
        )
        await apply_migrations(pool, migrations)
        app[DB_POOL] = pool
        yield
        await pool.close()

    return database


def broker(config: ServiceConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    async def broker(app: web.Application) -> AsyncIterator[None]:
        app[BROKER] = await connect_broker(config.rabbitmq_url.value, startup_timeout=config.startup_timeout)
        yield
        try:
            await asyncio.wait_for(app[BROKER].close(), config.publish_timeout)
        except TimeoutError:
            log.warning("the broker connection did not close cleanly in time")

    return broker


def messaging(
    config: ServiceConfig, service: str, handlers: HandlerTable
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The topology, the outbox relay, the consumer (for a service that handles events) and the
    queue keeper; on the way out, the consumer finishes what it holds before the relay stops."""

    async def messaging(app: web.Application) -> AsyncIterator[None]:
        connection = app[BROKER]
        # The broker user this service signs its messages as (the broker checks it).
        own_user = URL(config.rabbitmq_url.value).user
        own = queues_for(service, handlers) if handlers else None
        receivers = receivers_of(service)

        async def topology() -> tuple[AbstractChannel, AbstractExchange]:
            # One channel publishes (with confirms; an unroutable event raises), one consumes. The
            # references are kept here: aio-pika holds robust channels only weakly.
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            declared = await declare_topology(
                channel, own=own, receivers=receivers, retry_delays_ms=config.retry_delays
            )
            return channel, declared

        # Connected is not enough: the connection may drop again while the topology is declared (a
        # broker still starting, a network blip), and that is no reason to exit.
        publishing, exchange = await _while_the_broker_comes_back(topology, config, "rabbitmq topology")
        relay = OutboxRelay(
            pool=app[DB_POOL],
            outbox=app[OUTBOX],
            exchange=exchange,
            batch_size=config.outbox_batch_size,
            poll_interval=config.outbox_poll_interval,
            publish_timeout=config.publish_timeout,
            user_id=own_user,
            metrics=app[MESSAGING_METRICS],
        )
        relay_task = asyncio.create_task(relay.run(), name=f"{service} outbox relay")
        consumer = None
        if own is not None:
            consumer = await _while_the_broker_comes_back(
                functools.partial(_consume, app, config, own, handlers, own_user), config, "rabbitmq consumer"
            )
        keeper = QueueKeeper(connection, own, receivers, consumer, config, app[MESSAGING_METRICS])
        keeping = asyncio.create_task(keeper.run(), name=f"{service} queue check")
        yield
        # Stopped, not cancelled: aio-pika may swallow a cancellation that lands inside a look.
        keeper.stop()
        try:
            await asyncio.wait_for(keeping, config.publish_timeout + 1)
        except TimeoutError:
            log.warning("the queue check did not stop in time")
        if consumer is not None:
            await consumer.stop()
        relay.stop()
        try:
            await asyncio.wait_for(relay_task, config.publish_timeout + 1)
        except TimeoutError:
            log.warning("outbox relay did not stop in time; its rows will be published after restart")

    return messaging


async def _while_the_broker_comes_back(
    attempt: Callable[[], Awaitable[T]], config: ServiceConfig, what: str
) -> T:
    return await retry_until_deadline(
        attempt, what=what, deadline_seconds=config.startup_timeout, retrying=BROKER_UNAVAILABLE
    )


async def _consumer_channel(connection: AbstractConnection, config: ServiceConfig) -> AbstractChannel:
    """The consumer's channel: it also publishes (retries, dead letters), with confirms."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    await channel.set_qos(prefetch_count=config.consumer_prefetch)
    return channel


async def _consume(
    app: web.Application,
    config: ServiceConfig,
    own: ConsumerQueues,
    handlers: HandlerTable,
    own_user: str | None,
) -> Consumer:
    consumer = Consumer(
        queues=own,
        handlers=handlers,
        pool=app[DB_POOL],
        outbox=app[OUTBOX],
        channel=await _consumer_channel(app[BROKER], config),
        retry_delays_ms=config.retry_delays,
        publish_timeout=config.publish_timeout,
        unavailable_wait=config.database_unavailable_wait,
        batch_size=config.consumer_batch_size,
        own_user=own_user,
        publishers=bus().publisher,
        metrics=app[MESSAGING_METRICS],
    )
    await consumer.start()
    return consumer


@dataclasses.dataclass
class QueueKeeper:
    """The queues this service consumes from and publishes to must exist, bound: an operator may
    delete one, or a binding, by hand. Now and then, count what waits in them (the dead letters among
    them), say what was missing, declare it again, and bind every queue again (which repairs it).

    When its own queue is deleted, the broker cancels this service's consumer, or, if the queue is
    declared again at once, may not say so: once the queue is back, the keeper has the consumer
    consume anew on a new channel (tests/integration/test_queue_keeper.py)."""

    connection: AbstractConnection
    own: ConsumerQueues | None
    receivers: list[ConsumerQueues]
    consumer: Consumer | None
    config: ServiceConfig
    metrics: MessagingMetrics
    stopping: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, init=False)

    @property
    def watched(self) -> list[str]:
        mine = [self.own.main, self.own.dead_letter] if self.own is not None else []
        return mine + [receiver.main for receiver in self.receivers]

    def stop(self) -> None:
        self.stopping.set()

    async def run(self) -> None:
        while not self.stopping.is_set():
            try:
                await self.check()
            except BROKER_UNAVAILABLE as error:
                log.warning("could not look at the queues", error=repr(error))
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # Not this task's: aiormq ends an RPC this way when its connection closes under it.
                log.warning("could not look at the queues: the connection closed during the look")
            except Exception:  # say so, and look again next time: the keeper must outlive any one look
                log.exception("the queue check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.config.queue_check_interval)

    async def check(self) -> None:
        if not self.connection.connected.is_set():
            return  # reconnecting: aio-pika declares again what it had declared; look next time
        depths = await queue_depths(self.connection, self.watched)
        missing = [name for name, depth in depths.items() if depth is None]
        self.metrics.queues_missing.set(len(missing))
        for name, depth in depths.items():
            self.metrics.queue_messages.labels(name).set(depth or 0)
        if missing:
            log.error("queues missing; declaring them again", queues=missing)
        # A channel of its own: a queue deleted since the look closes it, not the relay's.
        async with await self.connection.channel() as channel:
            await declare_topology(
                channel,
                own=self.own,
                receivers=self.receivers,
                retry_delays_ms=self.config.retry_delays,
                present=[name for name, depth in depths.items() if depth is not None],
            )
        if self.consumer is None or self.own is None:
            return
        if self.own.main in missing or not await self.consumer.consuming():
            await self.consumer.consume_again(await _consumer_channel(self.connection, self.config))
