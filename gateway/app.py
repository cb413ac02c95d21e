"""The gateway's app: `create_app` lists the steps below, each one concern of the edge, in the order
a request meets them (middlewares, then the routes), and each step says why it is there."""

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import asyncpg
import swagger_ui_bundle
from aiohttp import web
from aiohttp.typedefs import Middleware
from yarl import URL

from gateway.config import GatewayConfig
from gateway.contract import public_contract
from gateway.edge import LOGIN, REGISTRATION, client_address, cors, rate_limits, size_limits
from gateway.events_page import render_events_page
from gateway.proxy import CallObserver, RetryPolicy, Upstream, forward
from gateway.ratelimit import MIGRATIONS, SharedTokenBuckets, bucket_housekeeping
from gateway.resilience import CircuitBreaker, CircuitState
from gateway.routes import ORDERS, ROUTES, USERS, Route
from shared.api_versions import DEPRECATED, MIGRATION_NOTE
from shared.app_keys import DB_POOL
from shared.auth import TokenVerifier
from shared.http import ReadinessCheck, dumps, health_routes, standard_middlewares
from shared.metrics import METRICS, Metrics
from shared.resources import database
from shared.tracing import Tracing

if TYPE_CHECKING:  # for the annotations only: see flow_page
    from gateway.flow import FlowPage

UPSTREAM_SESSION = web.AppKey("upstream_session", aiohttp.ClientSession)
READINESS_TIMEOUT = 2.0
STATIC = Path(__file__).parent / "static"
# The docs page runs Swagger UI from the gateway's own files: scripts from here only (docs.html has
# no inline script), inline styles and data: images because Swagger UI's CSS and widgets use them.
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOCS_HEADERS = {"Content-Security-Policy": DOCS_CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}


def create_app(config: GatewayConfig) -> web.Application:
    """The gateway: the middlewares a request passes, outermost first, then what answers it."""
    metrics = Metrics()
    tracing = Tracing("gateway", enabled=config.tracing_enabled)
    flow = flow_page(config)
    app = web.Application(middlewares=edge_middlewares(config, metrics, tracing, flow))
    if config.rate_limited:
        shared_rate_limits(app, config)
    cors(app, config.cors_origins)
    upstreams = upstream_services(config)
    app.cleanup_ctx.append(upstream_session(config))
    app.router.add_routes(proxy_routes(config, upstreams, tracing, observer=flow.observer if flow else None))
    app.router.add_routes(readiness_routes(app, upstreams))
    contract = public_contract()
    app.router.add_routes(documentation_routes(contract))
    if flow is not None:
        flow.attach(app)
    app.on_response_prepare.append(deprecation_notices(contract))
    app[METRICS] = metrics
    app.router.add_routes(metrics.routes())
    return app


def edge_middlewares(
    config: GatewayConfig, metrics: Metrics, tracing: Tracing, flow: "FlowPage | None"
) -> list[Middleware]:
    """Outermost first: the standard ones (security headers, request id, logs, metrics, traces,
    problems), then the flow page's recorder, inside the problem middleware but outside the limits
    (refusals are part of the story), then the size limits. The rate limits and CORS come after
    these (shared_rate_limits, edge.cors)."""
    return [
        *standard_middlewares(metrics, tracing, edge=True),
        *([flow.recorder] if flow is not None else []),
        size_limits(
            max_url_bytes=config.max_url_bytes,
            max_header_bytes=config.max_header_bytes,
            max_headers_total_bytes=config.max_headers_total_bytes,
        ),
    ]


def shared_rate_limits(app: web.Application, config: GatewayConfig) -> None:
    """Per-client limits kept in the gateway's own database, so that every replica enforces the same
    ones (gateway/ratelimit.py): a general one, and much stricter ones on sign-in and registration."""
    app.cleanup_ctx.append(database(config, MIGRATIONS))
    app.cleanup_ctx.append(bucket_housekeeping)

    def pool() -> asyncpg.Pool:
        return app[DB_POOL]

    requests = SharedTokenBuckets(
        pool,
        name="requests",
        rate=config.rate_limit_per_second,
        burst=config.rate_limit_burst,
        lease=config.rate_limit_lease,
    )

    def per_minute(name: str, allowance: int) -> SharedTokenBuckets:
        # Exact (a lease of one): these are where passwords are guessed, and where each request
        # costs a password hash.
        return SharedTokenBuckets(pool, name=name, rate=allowance / 60, burst=allowance, lease=1)

    logins = per_minute("logins", config.login_rate_limit_per_minute)
    registrations = per_minute("registrations", config.registration_rate_limit_per_minute)
    stricter = {**dict.fromkeys(LOGIN, logins), **dict.fromkeys(REGISTRATION, registrations)}
    app.middlewares.append(rate_limits(requests, stricter, trusted_proxies=config.trusted_proxy_networks))


def upstream_services(config: GatewayConfig) -> dict[str, Upstream]:
    """The services behind the gateway, each with a circuit breaker of its own: one failing service
    must not take the others' routes with it (gateway/resilience.py)."""
    urls = {USERS: config.users_service_url, ORDERS: config.orders_service_url}
    return {
        name: Upstream(
            name,
            URL(url),
            CircuitBreaker(
                name,
                failure_threshold=config.circuit_failure_threshold,
                open_seconds=config.circuit_open_seconds,
            ),
        )
        for name, url in urls.items()
    }


def upstream_session(config: GatewayConfig) -> Callable[[web.Application], AsyncIterator[None]]:
    """One pooled, keep-alive session for all upstream calls, under UPSTREAM_SESSION: a connection
    per call would cost a handshake each time. Every call through it is bounded in time."""

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(
                total=config.upstream_timeout, sock_connect=config.upstream_connect_timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Content-Type"),
        ) as session:
            app[UPSTREAM_SESSION] = session
            yield

    return upstream_session


def proxy_routes(
    config: GatewayConfig,
    upstreams: Mapping[str, Upstream],
    tracing: Tracing,
    *,
    observer: CallObserver | None,
) -> list[web.RouteDef]:
    """One route per line of the routing table (gateway/routes.py), each forwarding to its service:
    what is not in the table never reaches a service."""
    verifier = TokenVerifier.from_pem_file(
        config.jwt_public_key_file, issuer=config.jwt_issuer, audience=config.jwt_audience
    )
    retry = RetryPolicy(retries=config.upstream_retries, backoff=config.upstream_retry_backoff)
    return [
        web.route(
            route.method,
            route.path,
            proxy(route, upstreams[route.upstream], config, verifier, retry, tracing, observer),
        )
        for route in ROUTES
    ]


def proxy(
    route: Route,
    upstream: Upstream,
    config: GatewayConfig,
    verifier: TokenVerifier,
    retry: RetryPolicy,
    tracing: Tracing,
    observer: CallObserver | None,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The handler of one route: a request without a valid token is refused here, before any
    upstream work, where the route needs one (the service checks the token again)."""

    async def handler(request: web.Request) -> web.Response:
        if route.authenticated:
            verifier.principal_from_request(request)
        return await forward(
            request,
            upstream,
            request.app[UPSTREAM_SESSION],
            client=client_address(request, config.trusted_proxy_networks),
            max_body_bytes=config.max_body_bytes,
            body_timeout=config.request_body_timeout,
            retry=retry,
            tracing=tracing,
            observer=observer,
        )

    return handler


def readiness_routes(app: web.Application, upstreams: Mapping[str, Upstream]) -> list[web.RouteDef]:
    """/healthz and /readyz, which reports each upstream's state but is not decided by it.

    Readiness is what an orchestrator acts on: a replica that is not ready is taken out of the load
    balancer, so that clients go to the replicas that are. That helps only when the cause is this
    replica's own. An upstream being down is everyone's: every gateway replica sees it at once, so
    making it a readiness condition would take every gateway out together, and with them the routes
    of the service that is still up (and the 503 problem with Retry-After that each client of the
    failed one would get, for a load balancer's bare error). So the gateway is ready whenever it can
    take requests (it answers /readyz only once its upstream session and database are set up),
    whatever its upstreams' state; /readyz reports that state, and each route answers for its own
    upstream: its circuit breaker turns an outage into a 503 at once."""
    return health_routes(
        {}, reported={name: upstream_readiness(app, upstream) for name, upstream in upstreams.items()}
    )


def upstream_readiness(app: web.Application, upstream: Upstream) -> ReadinessCheck:
    """An upstream's state as /readyz reports it: its circuit, then its own /readyz."""

    async def check() -> None:
        if upstream.breaker.state is CircuitState.OPEN:
            # Requests to it are refused while its circuit is open; once the open period is over,
            # the upstream's own readiness is asked again.
            raise ConnectionError(f"{upstream.name}'s circuit is open")
        async with app[UPSTREAM_SESSION].get(
            upstream.base_url / "readyz", timeout=aiohttp.ClientTimeout(total=READINESS_TIMEOUT)
        ) as answer:
            if answer.status != 200:
                raise ConnectionError(f"{upstream.name} is not ready ({answer.status})")

    return check


def documentation_routes(contract: Mapping[str, Any]) -> list[web.AbstractRouteDef]:
    """/openapi.json (the public contract), /docs (Swagger UI, served from a Python package) and
    /docs/events (the events' AsyncAPI contract as a page, rendered here once: gateway/events_page.py)."""
    contract_json = dumps(contract)

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=contract_json, content_type="application/json")

    async def docs(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "docs.html", headers=DOCS_HEADERS)

    async def docs_script(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "docs.js", headers=DOCS_HEADERS)

    events_page = render_events_page().encode()

    async def events(_: web.Request) -> web.Response:
        return web.Response(body=events_page, content_type="text/html", charset="utf-8", headers=DOCS_HEADERS)

    async def events_stylesheet(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "events.css", headers=DOCS_HEADERS)

    # The note that every answer of a deprecated version links to (shared/api_versions.py).
    # Markdown reads as it is, so it is served as it is written.
    note = (STATIC / "migration-v2.md").read_bytes()

    async def migration_note(_: web.Request) -> web.Response:
        return web.Response(
            body=note,
            content_type="text/markdown",
            charset="utf-8",
            headers=DOCS_HEADERS,
        )

    return [
        web.get("/openapi.json", openapi),
        web.get("/docs", docs),
        web.get("/docs/docs.js", docs_script),
        web.get("/docs/events", events),
        web.get("/docs/events.css", events_stylesheet),
        web.get(MIGRATION_NOTE, migration_note),
        web.static("/docs/swagger-ui", swagger_ui_bundle.swagger_ui_path),
    ]


def deprecation_notices(
    contract: Mapping[str, Any],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An `on_response_prepare` handler: every answer of an operation the public contract marks
    deprecated carries the Deprecation, Sunset and Link headers (shared/api_versions.py), the
    gateway's own refusals (401, 429, 503, ...) as well as the service's answers, so that a client
    of version 1 is told on every answer it gets, whatever it is."""
    deprecated = {
        (method.upper(), path)
        for path, item in contract["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and operation.get("deprecated")
    }

    async def announce(request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        if resource is not None and (request.method, resource.canonical) in deprecated:
            response.headers.update(DEPRECATED.headers())

    return announce


def flow_page(config: GatewayConfig) -> "FlowPage | None":
    """The live flow page (gateway/flow/), or None when FLOW_ENABLED is off, as it must be outside
    development: it shows every event's data to anyone. Imported here only, so that a production
    gateway never loads its code."""
    if not config.flow_enabled:
        return None
    from gateway.flow import FlowPage

    return FlowPage(config)
