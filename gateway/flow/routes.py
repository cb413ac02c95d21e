"""The flow page on the gateway: /flow and its files under their Content-Security-Policy, the stream
it draws (/flow/events, Server-Sent Events), and FlowPage, the parts create_app wires in.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
from aiohttp import web

from gateway.config import GatewayConfig
from gateway.flow.hub import FlowHub, sse_frame
from gateway.flow.recorder import UpstreamRecorder, http_recorder
from gateway.flow.tap import EventTap
from shared.http import REQUEST_ID, REQUEST_ID_HEADER, SECURITY_HEADER_DEFAULTS, SECURITY_HEADERS

STATIC = Path(__file__).parent / "static"
# The flow page is the gateway's own files only: no inline script or style (its script sets styles
# through the DOM, which CSP allows), no eval, no other origin; it reads only its own event stream.
FLOW_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
FLOW_HEADERS = {"Content-Security-Policy": FLOW_CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}
FLOW_FILES = {"flow.css": "text/css", "flow.js": "text/javascript", "flow.svg": "image/svg+xml"}
HEARTBEAT_SECONDS = 15.0  # a comment line keeps idle proxies and browsers from closing the stream
WRITE_TIMEOUT = 5.0  # a page whose connection takes no bytes for this long is dropped (it reconnects)
RECONNECT_MS = 2000  # what the page's EventSource waits before reconnecting

FLOW_HUB = web.AppKey("flow_hub", FlowHub)
FLOW_TAP = web.AppKey("flow_tap", EventTap)


class FlowPage:
    """The page's parts, as create_app (gateway/app.py) wires them in: `recorder` among the
    middlewares, `observer` on every call to a service, and `attach` for the rest."""

    def __init__(self, config: GatewayConfig) -> None:
        self.hub = FlowHub()
        self.recorder = http_recorder(self.hub)
        self.observer = UpstreamRecorder(self.hub)
        self._config = config

    def attach(self, app: web.Application) -> None:
        """The hub under FLOW_HUB, the tap on the broker, the streams' end at shutdown, the routes."""
        app[FLOW_HUB] = self.hub
        app.cleanup_ctx.append(
            flow_tap(
                self._config.rabbitmq_url.value,
                startup_timeout=self._config.startup_timeout,
                shutdown_timeout=self._config.shutdown_timeout,
            )
        )
        app.on_shutdown.append(end_streams)
        app.router.add_routes(flow_routes())


def flow_routes() -> list[web.AbstractRouteDef]:
    """/flow (the live sequence diagram), its files, and /flow/events (the stream it draws)."""

    async def page(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "flow.html", headers=FLOW_HEADERS)

    def asset(name: str, content_type: str) -> web.RouteDef:
        async def serve(_: web.Request) -> web.FileResponse:
            return web.FileResponse(STATIC / name, headers={**FLOW_HEADERS, "Content-Type": content_type})

        return web.get(f"/flow/{name}", serve)

    return [
        web.get("/flow", page),
        *(asset(name, content_type) for name, content_type in FLOW_FILES.items()),
        web.get("/flow/events", flow_events),
    ]


async def flow_events(request: web.Request) -> web.StreamResponse:
    """GET /flow/events: the records as Server-Sent Events, the recent ones first."""
    hub = request.app[FLOW_HUB]
    # The security middleware adds its headers once the handler returns, but a stream's headers
    # leave at prepare(): so they are set here.
    response = web.StreamResponse(
        headers={
            **SECURITY_HEADERS,
            **SECURITY_HEADER_DEFAULTS,
            REQUEST_ID_HEADER: request[REQUEST_ID],
            "Content-Type": "text/event-stream; charset=utf-8",
            "X-Accel-Buffering": "no",  # a reverse proxy in front must not hold events back
        }
    )
    subscriber = hub.subscribe(request.headers.get("Last-Event-ID", ""))
    try:
        await response.prepare(request)
        await response.write(b"retry: %d\n\n" % RECONNECT_MS)
        while not hub.closed:
            frames, lost = subscriber.take()
            if lost:
                frames.insert(0, sse_frame("lost", orjson.dumps({"records": lost})))
            if frames:
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(b"".join(frames))
            elif not await subscriber.wait(HEARTBEAT_SECONDS):
                async with asyncio.timeout(WRITE_TIMEOUT):
                    await response.write(b": heartbeat\n\n")
    except TimeoutError:
        # The page's connection takes nothing: drop it rather than let its unsent bytes pile up;
        # its EventSource reconnects and is given the recent records again.
        if request.transport is not None:
            request.transport.abort()
    except ConnectionError:
        pass  # the page went away
    finally:
        hub.unsubscribe(subscriber)
    return response


def flow_tap(
    url: str, *, startup_timeout: float, shutdown_timeout: float
) -> Callable[[web.Application], AsyncIterator[None]]:
    """The cleanup context of the tap: started with the app, stopped after the streams ended."""

    async def tap(app: web.Application) -> AsyncIterator[None]:
        app[FLOW_TAP] = EventTap(app[FLOW_HUB], url=url, startup_timeout=startup_timeout)
        app[FLOW_TAP].start()
        yield
        await app[FLOW_TAP].stop(shutdown_timeout)

    return tap


async def end_streams(app: web.Application) -> None:
    """on_shutdown: runs before aiohttp waits for in-flight requests, so that open pages' streams,
    which would otherwise never end, do not hold up a graceful shutdown."""
    app[FLOW_HUB].close()
