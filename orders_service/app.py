import asyncio
import contextlib
import datetime
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import structlog
from aiohttp import web

from orders_service import services
from orders_service.config import OrdersConfig
from orders_service.handlers import handler_table
from orders_service.metrics import SAGA_METRICS, SagaMetrics
from orders_service.routes import IDEMPOTENCY_KEY_TTL, routes
from shared.metrics import METRICS
from shared.service import DB_POOL, create_service_app

log = structlog.get_logger("orders_service")

# Expired keys are already ignored when matching; deleting them only keeps the table small, so
# now and then is enough. Several replicas doing it at once is harmless.
PRUNE_KEYS_EVERY_SECONDS = 600.0


def create_app(config: OrdersConfig) -> web.Application:
    # Made before the app, whose registry it joins: the handlers need it at start.
    saga_metrics = SagaMetrics(registry=None)
    app = create_service_app(
        config,
        service="orders_service",
        package_dir=Path(__file__).parent,
        handlers=handler_table(saga_metrics),
    )
    app[METRICS].registry.register(saga_metrics.duration)
    app[SAGA_METRICS] = saga_metrics
    app[IDEMPOTENCY_KEY_TTL] = datetime.timedelta(seconds=config.idempotency_key_ttl_seconds)
    app.cleanup_ctx.append(_expired_key_pruning(app[IDEMPOTENCY_KEY_TTL]))
    app.router.add_routes(routes)
    return app


def _expired_key_pruning(ttl: datetime.timedelta) -> Callable[[web.Application], AsyncIterator[None]]:
    async def pruning(app: web.Application) -> AsyncIterator[None]:
        async def prune_forever() -> None:
            while True:
                await asyncio.sleep(PRUNE_KEYS_EVERY_SECONDS)
                try:
                    deleted = await services.delete_expired_idempotency_keys(app[DB_POOL], ttl)
                except Exception as error:  # housekeeping: it fails harmlessly and runs again later
                    log.warning("deleting expired idempotency keys failed", error=repr(error))
                else:
                    if deleted:
                        log.info("deleted expired idempotency keys", count=deleted)

        task = asyncio.create_task(prune_forever(), name="orders_service expired idempotency keys")
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return pruning
