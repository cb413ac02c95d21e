"""Tracing with OpenTelemetry: one order is one trace, across HTTP and AMQP.

    gateway  POST /api/orders (server) ─▶ call orders_service (client)
    orders_service  POST /api/orders (server) ─▶ SQL … ─▶ [outbox row carries the traceparent]
    orders_service  publish orders.order.created (producer, a child of the request, not of the relay)
    users_service   process orders.order.created (consumer) ─▶ SQL … ─▶ publish users.credit.reserved
    orders_service  process users.credit.reserved (consumer) ─▶ publish orders.order.approved

The W3C trace context crosses HTTP in the `traceparent` header and AMQP in the message's
`traceparent` header. The outbox is why the context also rides in the event itself (the CloudEvents
`traceparent` extension): the relay publishes later, from another task, so the request's context is
written down with the row at commit time and picked up again by the relay.

With no exporter configured (OTEL_EXPORTER_OTLP_ENDPOINT empty), tracing is off and costs nothing:
no spans are made, no headers injected, the database driver is not instrumented.
"""

import contextlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

from aiohttp import web
from opentelemetry import context, propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

TRACEPARENT = "traceparent"
_OFF: contextlib.nullcontext[Span] = contextlib.nullcontext(trace.INVALID_SPAN)


class Tracing:
    """A service's tracer when tracing is on; when it is off, every span is a no-op that records
    nothing, so callers never need to ask whether it is on."""

    def __init__(self, service: str, *, enabled: bool) -> None:
        # The tracer's scope names the service, so spans say which one made them even where
        # several services share a process (the tests).
        self._tracer = trace.get_tracer(service) if enabled else None

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def server_span(
        self, request: web.Request, *, trust_incoming: bool
    ) -> contextlib.AbstractContextManager[Span]:
        """The span of one HTTP request handled here. Behind the gateway, a request continues the
        caller's trace; at the edge (`trust_incoming=False`) a client cannot choose the trace its
        requests join, so each request starts a new one."""
        if self._tracer is None:
            return _OFF
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        parent = propagate.extract(request.headers) if trust_incoming else context.Context()
        return self._tracer.start_as_current_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": request.method, "http.route": route, "url.path": request.path},
        )

    @contextlib.contextmanager
    def client_span(self, name: str, headers: MutableMapping[str, str]) -> Iterator[Span]:
        """The span of one outgoing HTTP call; its context is injected into the call's headers."""
        if self._tracer is None:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(name, kind=SpanKind.CLIENT) as span:
            propagate.inject(headers)
            yield span

    def current_traceparent(self) -> str | None:
        """The current trace context as a W3C traceparent, to be carried by an outbox row."""
        if self._tracer is None:
            return None
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        return carrier.get(TRACEPARENT)

    @contextlib.contextmanager
    def producer_span(
        self, event_type: str, *, traceparent: str | None, headers: MutableMapping[str, Any]
    ) -> Iterator[Span]:
        """The span of publishing one event: a child of the context its outbox row was written in,
        injected into the message's headers for the consumer."""
        if self._tracer is None:
            yield trace.INVALID_SPAN
            return
        parent = propagate.extract({TRACEPARENT: traceparent} if traceparent else {})
        with self._tracer.start_as_current_span(
            f"publish {event_type}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes=_messaging_attributes(event_type, "publish"),
        ) as span:
            propagate.inject(headers)
            yield span

    def consumer_span(
        self, event_type: str, headers: Mapping[str, Any]
    ) -> contextlib.AbstractContextManager[Span]:
        """The span of handling one delivered event, a child of the span that published it."""
        if self._tracer is None:
            return _OFF
        carrier = {key: value for key, value in headers.items() if isinstance(value, str)}
        return self._tracer.start_as_current_span(
            f"process {event_type}",
            context=propagate.extract(carrier),
            kind=SpanKind.CONSUMER,
            attributes=_messaging_attributes(event_type, "process"),
        )


def record_status(span: Span, status: int) -> None:
    """Mark an HTTP span with its status; a 5xx is an error of this span (a 4xx is the caller's)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(StatusCode.ERROR)


def _messaging_attributes(event_type: str, operation: str) -> dict[str, str]:
    return {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": operation,
        "messaging.destination.name": event_type,
    }


def configure_tracing(service: str, otlp_endpoint: str) -> Callable[[], None]:
    """Install the process's tracer provider and export to `otlp_endpoint`; return a function that
    flushes and stops it. Nothing at all is set up when the endpoint is empty."""
    if not otlp_endpoint:
        return lambda: None
    # Imported only when tracing is on: the SDK and the exporter are the part that costs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces"))
    )
    trace.set_tracer_provider(provider)
    AsyncPGInstrumentor().instrument(tracer_provider=provider)  # type: ignore[no-untyped-call]  # untyped
    return provider.shutdown
