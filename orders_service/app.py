import datetime
from pathlib import Path

import structlog
from aiohttp import web

from orders_service import db, services
from orders_service.config import OrdersConfig
from orders_service.deadlines import saga_deadlines
from orders_service.handlers import handler_table
from orders_service.metrics import SAGA_METRICS, SagaMetrics
from orders_service.routes import IDEMPOTENCY_KEY_TTL, routes
from shared.app_keys import DB_POOL
from shared.metrics import Metrics
from shared.periodic import periodically
from shared.service import create_service_app

log = structlog.get_logger("orders_service")

# Expired keys are already ignored when matching; deleting them only keeps the table small, so
# now and then is enough. Several replicas doing it at once is harmless.
PRUNE_KEYS_EVERY_SECONDS = 600.0


def create_app(config: OrdersConfig) -> web.Application:
    metrics = Metrics()
    # Made before the app: the handlers, which the app's consumer takes, time the saga with it.
    saga_metrics = SagaMetrics(metrics.registry)
    app = create_service_app(
        config,
        service="orders_service",
        package_dir=Path(__file__).parent,
        handlers=handler_table(saga_metrics),
        metrics=metrics,
    )
    app[SAGA_METRICS] = saga_metrics
    deadline = datetime.timedelta(seconds=config.saga_deadline_seconds)

    async def overdue_gauge() -> None:
        saga_metrics.pending_past_deadline.set(await db.count_overdue(app[DB_POOL], deadline))

    metrics.refreshers.append(overdue_gauge)
    app.cleanup_ctx.append(saga_deadlines(deadline, config.saga_sweep_interval))
    app[IDEMPOTENCY_KEY_TTL] = datetime.timedelta(seconds=config.idempotency_key_ttl_seconds)
    app.cleanup_ctx.append(
        periodically("deleting expired idempotency keys", PRUNE_KEYS_EVERY_SECONDS, _delete_expired_keys)
    )
    app.router.add_routes(routes)
    return app


async def _delete_expired_keys(app: web.Application) -> None:
    deleted = await services.delete_expired_idempotency_keys(app[DB_POOL], app[IDEMPOTENCY_KEY_TTL])
    if deleted:
        log.info("deleted expired idempotency keys", count=deleted)
