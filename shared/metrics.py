"""Prometheus metrics, served at /metrics by every process.

Each app has its own registry rather than prometheus_client's global one, so that several apps in
one process (the tests) count separately, exactly as separate processes do. No metric carries a
`service` label: Prometheus scrapes each process as its own job and adds `job` itself.

Names and labels are a contract with the dashboard (deploy/observability/grafana/), which a test
checks against what the services really export.
"""

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from shared.events import EVENT_TYPES

# Request latencies run from a millisecond (a cached read) to seconds (a timed-out upstream).
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """What every process measures: its HTTP traffic."""

    def __init__(self) -> None:
        # A `_created` timestamp beside every counter doubles what a scrape shows, for nothing that
        # Prometheus needs (it sees resets itself). The switch is process-wide; setting it twice is harmless.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "http_requests",
            "HTTP requests handled, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response, by route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        # Run before each scrape: for values read from somewhere else (the outbox table) rather than
        # counted as they happen.
        self.refreshers: list[Callable[[], Awaitable[None]]] = []

    def observe_request(self, request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        # The template (/api/orders/{id}), never the path: one series per route, not per order.
        route = resource.canonical if resource is not None else "unmatched"
        self.http_requests.labels(request.method, route, str(status)).inc()
        self.http_duration.labels(request.method, route).observe(seconds)

    def routes(self) -> list[web.RouteDef]:
        async def metrics(_: web.Request) -> web.Response:
            for refresh in self.refreshers:
                await refresh()
            exposition = generate_latest(self.registry)
            return web.Response(body=exposition, headers={"Content-Type": CONTENT_TYPE_LATEST})

        return [web.get("/metrics", metrics)]


METRICS = web.AppKey("metrics", Metrics)


class MessagingMetrics:
    """What a service with an outbox and a consumer measures: each step of an event's life."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def per_type(name: str, documentation: str) -> Counter:
            return Counter(name, documentation, ["type"], registry=registry)

        self.published = per_type("events_published", "Events published and confirmed by the broker.")
        self.consumed = per_type("events_consumed", "Events applied (inbox, change and outbox committed).")
        self.duplicates = per_type("events_duplicates", "Deliveries skipped because the inbox had the event.")
        self.retried = per_type("events_retried", "Events sent to a retry queue after their handler failed.")
        self.dead_lettered = per_type("events_dead_lettered", "Events moved to the dead-letter queue.")
        self.publish_failures = per_type(
            "outbox_publish_failures",
            "Publishes of an outbox row that the broker returned or refused, or that failed.",
        )
        self.set_aside = per_type("outbox_set_aside", "Outbox rows set aside after failing to publish.")
        self.batch_sizes = Histogram(
            "events_applied_per_transaction",
            "Events a consumer applied together in one transaction (shared/inbox.py): 1 at light load.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=registry,
        )
        self.outbox_lag = Gauge(
            "outbox_lag_seconds",
            "Age of the oldest unpublished outbox row (0 when every row is published).",
            registry=registry,
        )
        self.outbox_unpublished = Gauge(
            "outbox_unpublished_events", "Outbox rows not yet confirmed by the broker.", registry=registry
        )
        self.queues_missing = Gauge(
            "bus_queues_missing",
            "Queues this service consumes from or publishes to that were missing at the last check.",
            registry=registry,
        )
        self.queue_messages = Gauge(
            "queue_messages",
            "Messages waiting in a queue this service consumes from, publishes to, or dead-letters"
            " into, at the last check (QUEUE_CHECK_INTERVAL).",
            ["queue"],
            registry=registry,
        )
        self.outbox_waiting_for_operator = Gauge(
            "outbox_set_aside_events",
            "Outbox rows set aside, waiting for an operator to retry them (shared/parked.py).",
            registry=registry,
        )


def known_type(event_type: str | None) -> str:
    """An event type fit to name a span or label a metric: a hostile or broken message must not
    create a new time series for every type it makes up."""
    return event_type if event_type in EVENT_TYPES else "unknown"
