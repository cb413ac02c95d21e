from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import swagger_ui_bundle
from aiohttp import web
from yarl import URL

from gateway.config import GatewayConfig
from gateway.contract import public_contract
from gateway.proxy import Upstream, forward
from gateway.routes import ORDERS, ROUTES, USERS, Route
from shared.auth import TokenVerifier
from shared.http import ReadinessCheck, dumps, health_routes, standard_middlewares

UPSTREAM_SESSION = web.AppKey("upstream_session", aiohttp.ClientSession)
READINESS_TIMEOUT = 2.0
STATIC = Path(__file__).parent / "static"


def create_app(config: GatewayConfig) -> web.Application:
    app = web.Application(middlewares=standard_middlewares())
    verifier = TokenVerifier.from_pem_file(
        config.jwt_public_key_file, issuer=config.jwt_issuer, audience=config.jwt_audience
    )
    upstreams = {
        USERS: Upstream(USERS, URL(config.users_service_url)),
        ORDERS: Upstream(ORDERS, URL(config.orders_service_url)),
    }

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
                request, upstream, request.app[UPSTREAM_SESSION], max_body_bytes=config.max_body_bytes
            )

        return web.route(route.method, route.path, handler)

    app.router.add_routes([proxy_to(route) for route in ROUTES])

    def upstream_ready(upstream: Upstream) -> ReadinessCheck:
        async def check() -> None:
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
        return web.FileResponse(STATIC / "docs.html")

    async def docs_script(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "docs.js")

    return [
        web.get("/openapi.json", openapi),
        web.get("/docs", docs),
        web.get("/docs/docs.js", docs_script),
        web.static("/docs/swagger-ui", swagger_ui_bundle.swagger_ui_path),
    ]
