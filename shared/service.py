"""What every service process has in common: the app skeleton, its resources, and how it runs.

A service's `create_app(config)` calls `create_service_app` and adds its own routes. Resources live
in `cleanup_ctx`, so they open in order at start-up and close in reverse order at shutdown.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
import structlog
import uvloop
from aio_pika.abc import AbstractRobustConnection
from aiohttp import web

from shared.auth import TOKEN_VERIFIER, TokenVerifier
from shared.broker import check_broker, connect_broker
from shared.config import BaseConfig, ServiceConfig
from shared.db import apply_migrations, check_database, create_pool
from shared.http import health_routes, standard_middlewares
from shared.logging import configure_logging
from shared.openapi import OpenApiSpec

log = structlog.get_logger("service")

DB_POOL = web.AppKey("db_pool", asyncpg.Pool)
BROKER = web.AppKey("broker", AbstractRobustConnection)

ConfigT = TypeVar("ConfigT", bound=BaseConfig)

MAX_BODY_BYTES = 64 * 1024  # the largest valid request (100 order items) is about 10 KiB


def create_service_app(config: ServiceConfig, *, package_dir: Path) -> web.Application:
    """The common skeleton: middlewares, contract enforcement, database, broker and health."""
    spec = OpenApiSpec.load(package_dir / "openapi.yaml")
    app = web.Application(
        middlewares=[*standard_middlewares(), spec.middleware], client_max_size=MAX_BODY_BYTES
    )
    app[TOKEN_VERIFIER] = TokenVerifier.from_pem_file(
        config.jwt_public_key_file, issuer=config.jwt_issuer, audience=config.jwt_audience
    )
    app.cleanup_ctx.append(_database(config, package_dir / "migrations"))
    app.cleanup_ctx.append(_broker(config))

    async def postgres() -> None:
        await check_database(app[DB_POOL])

    async def rabbitmq() -> None:
        await check_broker(app[BROKER])

    app.router.add_routes(health_routes({"postgres": postgres, "rabbitmq": rabbitmq}))
    return app


def _database(config: ServiceConfig, migrations: Path) -> Callable[[web.Application], AsyncIterator[None]]:
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
        await app[BROKER].close()

    return broker


def run(service: str, create_app: Callable[[ConfigT], web.Application], config: ConfigT) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting, finish in-flight requests, clean up."""
    configure_logging(service=service, level=config.log_level, fmt=config.log_format)
    log.info("starting", config=config.masked())
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        create_app(config),
        host=config.http_host,
        port=config.http_port,
        shutdown_timeout=config.shutdown_timeout,
        access_log=None,
        print=None,
        handle_signals=True,
    )
    log.info("stopped")
