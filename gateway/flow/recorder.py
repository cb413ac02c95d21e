"""The HTTP arrows of the flow page: each /api/ call as the client sees it (a middleware), and each
call the gateway makes to a service for it (the proxy's hook, gateway/proxy.py: CallObserver).

With no page open, an HTTP request costs one attribute check here and nothing more (the benchmark
of the gateway runs that way).

Nothing secret reaches a page: an HTTP record holds the method, the path, the status and the
duration, never a header, a query string or a body, so no token and no password.
"""

import asyncio
import re
import time
from collections.abc import Awaitable

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.flow.hub import FlowHub
from gateway.flow.records import CLIENT, GATEWAY, FlowRecord, Kind
from shared.http import REQUEST_ID
from shared.problems import Problem

MAX_LABEL_PATH = 120

_ORDER_IN_PATH = re.compile(
    r"/api/(?:v2/)?orders/([0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})(?:/|$)"
)


def http_recorder(hub: FlowHub) -> Middleware:
    """Records each /api/ request as the client sees it: its arrival and the answer it gets."""

    @web.middleware
    async def record_http(request: web.Request, handler: Handler) -> web.StreamResponse:
        # First, and all a request pays while no page is open. The flow page, docs and health
        # probes are not part of any story.
        if not hub.watching or not request.path.startswith("/api/"):
            return await handler(request)
        hub.publish(_request_record(request, CLIENT, GATEWAY))
        started = time.perf_counter()
        status: int | None = None
        detail: str | None = "client went away"
        try:
            response = await handler(request)
            status, detail = response.status, response.headers.get("Location")
            return response
        except (Problem, web.HTTPException) as refusal:
            status, detail = refusal.status, None
            raise
        except Exception:
            status, detail = 500, None  # the problem middleware answers it so
            raise
        finally:
            hub.publish(_response_record(request, GATEWAY, CLIENT, started, status, detail))

    return record_http


class UpstreamRecorder:
    """The proxy's observer (gateway/proxy.py: CallObserver): records each call to a service."""

    def __init__(self, hub: FlowHub) -> None:
        self._hub = hub

    def observe(
        self, request: web.Request, upstream: str, call: Awaitable[web.Response]
    ) -> Awaitable[web.Response]:
        if not self._hub.watching:
            return call  # nobody is watching: the call, untouched
        return self._observed(request, upstream, call)

    async def _observed(
        self, request: web.Request, upstream: str, call: Awaitable[web.Response]
    ) -> web.Response:
        self._hub.publish(_request_record(request, GATEWAY, upstream))
        started = time.perf_counter()
        try:
            response = await call
        except BaseException as error:
            self._hub.publish(_response_record(request, upstream, GATEWAY, started, None, _no_answer(error)))
            raise
        self._hub.publish(
            _response_record(
                request, upstream, GATEWAY, started, response.status, response.headers.get("Location")
            )
        )
        return response


def _order_id(*texts: str | None) -> str | None:
    """The order a path or a Location header names (/api/orders/{id}...), if any."""
    for text in texts:
        if text and (found := _ORDER_IN_PATH.search(text)):
            return found.group(1).lower()
    return None


def _short(path: str) -> str:
    return path if len(path) <= MAX_LABEL_PATH else path[: MAX_LABEL_PATH - 1] + "…"


def _request_record(request: web.Request, source: str, target: str) -> FlowRecord:
    return FlowRecord(
        Kind.HTTP_REQUEST,
        source,
        target,
        f"{request.method} {_short(request.path)}",
        request.get(REQUEST_ID),
        order_id=_order_id(request.path),
        method=request.method,
        path=_short(request.path),
    )


def _response_record(
    request: web.Request,
    source: str,
    target: str,
    started: float,
    status: int | None,
    detail: str | None,
) -> FlowRecord:
    """`detail` is the answer's Location header when there is an answer (a new order's id is only
    there), or why none came."""
    ms = round((time.perf_counter() - started) * 1000, 1)
    answered = status is not None
    return FlowRecord(
        Kind.HTTP_RESPONSE,
        source,
        target,
        f"{status} · {ms:g} ms" if answered else f"no answer: {detail} · {ms:g} ms",
        request.get(REQUEST_ID),
        order_id=_order_id(request.path, detail if answered else None),
        method=request.method,
        path=_short(request.path),
        status=status,
        ms=ms,
    )


def _no_answer(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "unreachable"
    if isinstance(error, aiohttp.ClientError):
        return "broken answer"
    if isinstance(error, asyncio.CancelledError):
        return "client went away"
    return type(error).__name__
