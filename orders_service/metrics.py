"""The saga's own metric: how long an order waits between PENDING and its outcome.

Observed only after the transaction that ended the saga has committed, so a rolled-back attempt
(retried later) is not counted twice.
"""

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, Histogram

from orders_service.saga import OrderStatus
from shared.unit_of_work import UnitOfWork

# From a few milliseconds (both services idle) to the retry delays (a service was down).
SAGA_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class SagaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "saga_duration_seconds",
            "Time from an order's creation (PENDING) to its outcome: APPROVED, REJECTED or CANCELLED.",
            ["outcome"],
            buckets=SAGA_BUCKETS,
            registry=registry,
        )
        self.pending_past_deadline = Gauge(
            "orders_pending_past_deadline",
            "Orders still PENDING after their deadline (the next sweep rejects them; more than a few"
            " for long means the sweep is not running).",
            registry=registry,
        )

    def transitioned(self, work: UnitOfWork, previous: OrderStatus, order: asyncpg.Record) -> None:
        """Record the end of the saga if this transition (made in `work`, `order` as it stored it)
        left PENDING. Leaving APPROVED for CANCELLED is not the saga: it had ended already."""
        if previous is not OrderStatus.PENDING or order["status"] == OrderStatus.PENDING:
            return
        seconds = (order["updated_at"] - order["created_at"]).total_seconds()
        outcome = order["status"]
        work.after_commit(lambda: self.duration.labels(outcome).observe(seconds))


SAGA_METRICS = web.AppKey("saga_metrics", SagaMetrics)
