"""What every service process has in common: the app skeleton and how it runs.

A service's `create_app(config)` calls `create_service_app` and adds its own routes. The skeleton
puts what the app holds under typed keys (shared/app_keys.py) and its resources in `cleanup_ctx`
(shared/resources.py), so they open in order at start-up and close in reverse order at shutdown. On
SIGTERM aiohttp stops accepting requests and finishes the ones in flight; then the resources close.
"""

import asyncio
import datetime
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import structlog
import uvloop
from aiohttp import web

from shared.app_keys import BROKER, CONTRACT, DB_POOL, MESSAGING_METRICS, OUTBOX
from shared.auth import TOKEN_VERIFIER, TokenVerifier
from shared.broker import check_broker
from shared.config import BaseConfig, ServiceConfig
from shared.consumer import HandlerTable
from shared.db import SHARED_MIGRATIONS, check_database
from shared.http import health_routes, hide_server_version, standard_middlewares
from shared.logging import configure_logging
from shared.metrics import METRICS, MessagingMetrics, Metrics
from shared.openapi import OpenApiSpec
from shared.periodic import periodically
from shared.relay import outbox_backlog
from shared.resources import broker, database, messaging
from shared.retention import prune_old_rows
from shared.tracing import Tracing, configure_tracing
from shared.unit_of_work import Outbox

log = structlog.get_logger("service")

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
    app.cleanup_ctx.append(broker(config))
    app.cleanup_ctx.append(messaging(config, service, handlers))
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
