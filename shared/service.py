"""What every service process has in common: the app skeleton, its resources, and how it runs.

A service's `create_app(config)` calls `create_service_app` and adds its own routes. Resources live
in `cleanup_ctx`, so they open in order at start-up and close in reverse order at shutdown:

    database (pool, migrations) → broker connection → messaging (topology, outbox relay, consumer)

On SIGTERM aiohttp stops accepting requests and finishes the ones in flight; then the consumer
stops taking messages and finishes the ones in hand, the relay stops, and the connections close.
"""

import asyncio
import datetime
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import structlog
import uvloop
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web
from yarl import URL

from shared.auth import TOKEN_VERIFIER, TokenVerifier
from shared.broker import BROKER_UNAVAILABLE, check_broker, connect_broker
from shared.bus_contract import bus
from shared.config import BaseConfig, DatabaseConfig, ServiceConfig
from shared.consumer import Consumer, HandlerTable
from shared.db import SHARED_MIGRATIONS, apply_migrations, check_database, create_pool
from shared.http import health_routes, hide_server_version, standard_middlewares
from shared.logging import configure_logging
from shared.metrics import METRICS, MessagingMetrics, Metrics
from shared.openapi import OpenApiSpec
from shared.periodic import periodically
from shared.relay import OutboxRelay, outbox_backlog
from shared.retention import prune_old_rows
from shared.topology import declare_topology, queue_depths, queues_for, receivers_of
from shared.tracing import Tracing, configure_tracing
from shared.unit_of_work import Outbox

log = structlog.get_logger("service")

CONTRACT = web.AppKey("contract", OpenApiSpec)
DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
BROKER = web.AppKey("broker", AbstractRobustConnection)
OUTBOX = web.AppKey("outbox", Outbox)
MESSAGING_METRICS = web.AppKey("messaging_metrics", MessagingMetrics)

ConfigT = TypeVar("ConfigT", bound=BaseConfig)


def create_service_app(
    config: ServiceConfig,
    *,
    service: str,
    package_dir: Path,
    handlers: HandlerTable,
    metrics: Metrics | None = None,
) -> web.Application:
    """The common skeleton: middlewares, contract enforcement, database, broker, events, health,
    metrics (in `metrics`, when the service made them first, for metrics of its own) and tracing."""
    spec = OpenApiSpec.load(package_dir / "openapi.yaml")
    metrics = metrics or Metrics()
    tracing = Tracing(service, enabled=config.tracing_enabled)
    app = web.Application(
        middlewares=[*standard_middlewares(metrics, tracing), spec.middleware],
        client_max_size=config.max_body_bytes,
    )
    app[CONTRACT] = spec
    app[METRICS] = metrics
    app[MESSAGING_METRICS] = MessagingMetrics(metrics.registry)
    app[TOKEN_VERIFIER] = TokenVerifier.from_pem_file(
        config.jwt_public_key_file, issuer=config.jwt_issuer, audience=config.jwt_audience
    )
    app[OUTBOX] = Outbox(source=service, tracing=tracing)
    app.cleanup_ctx.append(database(config, [SHARED_MIGRATIONS, package_dir / "migrations"]))
    app.cleanup_ctx.append(_broker(config))
    app.cleanup_ctx.append(_messaging(config, service, handlers))
    outbox_keep = datetime.timedelta(seconds=config.outbox_retention_seconds)
    inbox_keep = datetime.timedelta(seconds=config.inbox_retention_seconds)

    async def retention(app: web.Application) -> None:
        await prune_old_rows(app[DB_POOL], outbox_keep=outbox_keep, inbox_keep=inbox_keep)

    app.cleanup_ctx.append(periodically("retention", config.retention_interval, retention))

    async def outbox_gauges() -> None:
        backlog = await outbox_backlog(app[DB_POOL])
        app[MESSAGING_METRICS].outbox_unpublished.set(backlog.waiting)
        app[MESSAGING_METRICS].outbox_lag.set(backlog.oldest_seconds)
        app[MESSAGING_METRICS].outbox_waiting_for_operator.set(backlog.set_aside)

    metrics.refreshers.append(outbox_gauges)
    app.router.add_routes(metrics.routes())

    async def postgres() -> None:
        await check_database(app[DB_POOL])

    async def rabbitmq() -> None:
        await check_broker(app[BROKER])

    app.router.add_routes(health_routes({"postgres": postgres, "rabbitmq": rabbitmq}))
    return app


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


def _broker(config: ServiceConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    async def broker(app: web.Application) -> AsyncIterator[None]:
        app[BROKER] = await connect_broker(config.rabbitmq_url.value, startup_timeout=config.startup_timeout)
        yield
        try:
            await asyncio.wait_for(app[BROKER].close(), config.publish_timeout)
        except TimeoutError:
            log.warning("the broker connection did not close cleanly in time")

    return broker


def _messaging(
    config: ServiceConfig, service: str, handlers: HandlerTable
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def messaging(app: web.Application) -> AsyncIterator[None]:
        connection = app[BROKER]
        metrics = app[MESSAGING_METRICS]
        # The broker user this service signs its messages as (the broker checks it).
        own_user = URL(config.rabbitmq_url.value).user
        own = queues_for(service, handlers) if handlers else None
        receivers = receivers_of(service)
        # One channel publishes (with confirms; an unroutable event raises), one consumes. The
        # references are kept here: aio-pika holds robust channels only weakly.
        publishing = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await declare_topology(
            publishing, own=own, receivers=receivers, retry_delays_ms=config.retry_delays
        )
        relay = OutboxRelay(
            pool=app[DB_POOL],
            outbox=app[OUTBOX],
            exchange=exchange,
            batch_size=config.outbox_batch_size,
            poll_interval=config.outbox_poll_interval,
            publish_timeout=config.publish_timeout,
            user_id=own_user,
            metrics=metrics,
        )
        relay_task = asyncio.create_task(relay.run(), name=f"{service} outbox relay")
        consumer: Consumer | None = None
        if own is not None:
            consuming = await connection.channel(publisher_confirms=True, on_return_raises=True)
            await consuming.set_qos(prefetch_count=config.consumer_prefetch)
            consumer = Consumer(
                queues=own,
                handlers=handlers,
                pool=app[DB_POOL],
                outbox=app[OUTBOX],
                channel=consuming,
                retry_delays_ms=config.retry_delays,
                publish_timeout=config.publish_timeout,
                unavailable_wait=config.database_unavailable_wait,
                own_user=own_user,
                publishers=bus().publisher,
                metrics=metrics,
            )
            await consumer.start()

        watched = [q.main for q in [*([own] if own else []), *receivers]] + ([own.dead_letter] if own else [])

        async def keep_the_queues() -> None:
            """The queues this service consumes from and publishes to must exist, bound: an operator
            may delete one, or a binding, by hand. Now and then, count what waits in them (the dead
            letters among them), say what was missing, and declare it all again (which repairs it)."""
            while True:
                try:
                    depths = await queue_depths(connection, watched)
                    missing = [name for name, depth in depths.items() if depth is None]
                    metrics.queues_missing.set(len(missing))
                    for name, depth in depths.items():
                        metrics.queue_messages.labels(name).set(depth or 0)
                    if missing:
                        log.error("queues missing; declaring them again", queues=missing)
                    await declare_topology(
                        publishing, own=own, receivers=receivers, retry_delays_ms=config.retry_delays
                    )
                    if consumer is not None and own is not None and own.main in missing:
                        await consumer.start()  # the broker cancelled our consumer with the queue
                except BROKER_UNAVAILABLE as error:
                    log.warning("could not look at the queues", error=repr(error))
                await asyncio.sleep(config.queue_check_interval)

        watch = asyncio.create_task(keep_the_queues(), name=f"{service} queue check")
        yield
        watch.cancel()
        if consumer is not None:
            await consumer.stop()
        relay.stop()
        try:
            await asyncio.wait_for(relay_task, config.publish_timeout + 1)
        except TimeoutError:
            log.warning("outbox relay did not stop in time; its rows will be published after restart")

    return messaging


def run(
    service: str,
    create_app: Callable[[ConfigT], web.Application],
    config: ConfigT,
    *,
    server_limits: Mapping[str, Any] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish in-flight work, clean up.

    `server_limits` are arguments of aiohttp's server: its parser's limits (max_line_size,
    max_field_size, max_headers) and its keep-alive timeout, which the gateway, facing clients,
    sets just above its own limits and to its header deadline (gateway/edge.py).
    """
    configure_logging(service=service, level=config.log_level, fmt=config.log_format)
    stop_tracing = configure_tracing(service, config.otel_exporter_otlp_endpoint)
    log.info("starting", listen=f"{config.http_host}:{config.http_port}", environment=config.environment)
    log.debug("configuration", **config.masked())
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    hide_server_version()
    web.run_app(
        create_app(config),
        host=config.http_host,
        port=config.http_port,
        shutdown_timeout=config.shutdown_timeout,
        access_log=None,
        print=None,
        handle_signals=True,
        **dict(server_limits or {}),
    )
    stop_tracing()  # sends the spans still buffered
    log.info("stopped")
