from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import swagger_ui_bundle
from aiohttp import web
from yarl import URL

from gateway.config import GatewayConfig
from gateway.contract import public_contract
from gateway.edge import cors, rate_limits, size_limits
from gateway.proxy import RetryPolicy, Upstream, forward
from gateway.resilience import CircuitBreaker, CircuitState
from gateway.routes import ORDERS, ROUTES, USERS, Route
from shared.auth import TokenVerifier
from shared.http import ReadinessCheck, dumps, health_routes, standard_middlewares

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
    app = web.Application(
        middlewares=[
            *standard_middlewares(),
            size_limits(
                max_url_bytes=config.max_url_bytes,
                max_header_bytes=config.max_header_bytes,
                max_headers_total_bytes=config.max_headers_total_bytes,
            ),
            rate_limits(
                per_second=config.rate_limit_per_second,
                burst=config.rate_limit_burst,
                login_per_minute=config.login_rate_limit_per_minute,
            ),
        ]
    )
    cors(app, config.cors_origins)
    verifier = TokenVerifier.from_pem_file(
        config.jwt_public_key_file, issuer=config.jwt_issuer, audience=config.jwt_audience
    )

    def make_upstream(name: str, url: str) -> Upstream:
        breaker = CircuitBreaker(
            name, failure_threshold=config.circuit_failure_threshold, open_seconds=config.circuit_open_seconds
        )
        return Upstream(name, URL(url), breaker)

    upstreams = {
        USERS: make_upstream(USERS, config.users_service_url),
        ORDERS: make_upstream(ORDERS, config.orders_service_url),
    }
    retry = RetryPolicy(retries=config.upstream_retries, backoff=config.upstream_retry_backoff)

    async def upstream_session(app: web.Application) -> AsyncIterator[None]:
        # One pooled, keep-alive session for all upstream calls; every call is bounded in time.
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

    app.cleanup_ctx.append(upstream_session)

    def proxy_to(route: Route) -> web.RouteDef:
        upstream = upstreams[route.upstream]

        async def handler(request: web.Request) -> web.Response:
            if route.authenticated:
                # Refused here, before any upstream work; the service checks the token again.
                verifier.user_id_from_request(request)
            return await forward(
                request,
                upstream,
                request.app[UPSTREAM_SESSION],
                max_body_bytes=config.max_body_bytes,
                retry=retry,
            )

        return web.route(route.method, route.path, handler)

    app.router.add_routes([proxy_to(route) for route in ROUTES])

    def upstream_ready(upstream: Upstream) -> ReadinessCheck:
        async def check() -> None:
            if upstream.breaker.state is CircuitState.OPEN:
                # Not ready while requests to it are refused; once the open period is over, the
                # upstream's own readiness decides again (so a replica out of rotation recovers).
                raise ConnectionError(f"{upstream.name}'s circuit is open")
            async with app[UPSTREAM_SESSION].get(
                upstream.base_url / "readyz", timeout=aiohttp.ClientTimeout(total=READINESS_TIMEOUT)
            ) as answer:
                if answer.status != 200:
                    raise ConnectionError(f"{upstream.name} is not ready ({answer.status})")

        return check

    app.router.add_routes(health_routes({name: upstream_ready(up) for name, up in upstreams.items()}))
    app.router.add_routes(documentation_routes())
    return app


def documentation_routes() -> list[web.AbstractRouteDef]:
    """/openapi.json (the public contract) and /docs (Swagger UI, served from a Python package)."""
    contract = dumps(public_contract())

    async def openapi(_: web.Request) -> web.Response:
        return web.Response(body=contract, content_type="application/json")

    async def docs(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "docs.html", headers=DOCS_HEADERS)

    async def docs_script(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "docs.js", headers=DOCS_HEADERS)

    return [
        web.get("/openapi.json", openapi),
        web.get("/docs", docs),
        web.get("/docs/docs.js", docs_script),
        web.static("/docs/swagger-ui", swagger_ui_bundle.swagger_ui_path),
    ]
