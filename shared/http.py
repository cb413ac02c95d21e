"""HTTP plumbing every process uses: request ids, one log line, one trace span and the metrics of
each request, JSON bodies, problem responses for every failure, security headers on every response,
and the /healthz and /readyz endpoints."""

import asyncio
import ipaddress
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import orjson
import structlog
from aiohttp import web, web_response
from aiohttp.typedefs import Handler

from shared.db import DATABASE_NOT_ANSWERING
from shared.envelope import Cause
from shared.metrics import Metrics
from shared.problems import Problem
from shared.tracing import Tracing, record_status

log = structlog.get_logger("http")

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID = web.RequestKey("request_id", str)
# A client may name its own request id, but only as a short opaque token: anything else (control
# characters, megabytes of text) would end up in every log line, so it is replaced.
_ACCEPTABLE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# What every response says about itself (OWASP API8, security misconfiguration): never sniff a type,
# never frame, never leak the URL as a referrer, and name no software versions an attacker could
# look up. `Server` is set rather than removed because aiohttp adds its own when none is set.
SERVER_NAME = "eda-reference"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Server": SERVER_NAME,
}
# An API response is data, never a page: it may load nothing and be framed by nobody. A handler
# that serves a real page (the gateway's /docs) or a cacheable file sets its own values.
API_CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADER_DEFAULTS = {
    "Content-Security-Policy": API_CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
}

ReadinessCheck = Callable[[], Awaitable[None]]
HEALTH_PATHS = frozenset({"/healthz", "/readyz"})
# Asked every few seconds by orchestrators and Prometheus: when they pass, they are not the story.
QUIET_PATHS = HEALTH_PATHS | {"/metrics"}
# A readiness check that takes longer than this fails: an orchestrator asks again in a few seconds.
READINESS_CHECK_TIMEOUT = 2.0


def _json_default(value: object) -> str:
    # asyncpg returns its own UUID subclass, which orjson does not recognise as a UUID.
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(data: Any) -> bytes:
    """JSON as the API writes it: UUIDs as strings, times as RFC 3339 in UTC with a Z."""
    return orjson.dumps(data, default=_json_default, option=orjson.OPT_UTC_Z)


def json_response(data: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=dumps(data),
        content_type="application/json",
        headers=headers,
    )


# No contract nests a body more than three levels deep (an order's items); this is ten times that.
# Deeper documents are refused as they are read, so that nothing downstream (schema validation,
# checks that walk the document, serialising it again) ever meets one: orjson itself parses up to
# 1,024 levels, while anything recursive in Python stops at 1,000, and orjson.dumps at 255.
MAX_JSON_DEPTH = 32


async def read_json(request: web.Request) -> Any:
    """The request body as JSON, or a problem: 415 for another media type, 400 for bad JSON or JSON
    nested deeper than MAX_JSON_DEPTH.

    aiohttp itself refuses a body over `client_max_size` with 413 while reading it.
    """
    if request.content_type != "application/json":
        raise Problem(415, "Send the body as application/json.", headers={"Accept-Post": "application/json"})
    raw = await request.read()
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise Problem(400, f"The body is not valid JSON: {error.msg}.", title="Malformed JSON") from None
    if json_depth(document) > MAX_JSON_DEPTH:
        detail = f"The body nests arrays or objects over {MAX_JSON_DEPTH} levels deep."
        raise Problem(400, detail, title="Malformed JSON")
    return document


def json_depth(document: Any) -> int:
    """How deep arrays and objects nest in a parsed JSON document (a scalar: 0, `[]`: 1, `[[]]`: 2).

    Iterative, with a stack of its own: the depth of what a client sent must not decide how deep
    the interpreter's stack goes."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict):
            node = node.values()
        elif not isinstance(node, list):
            continue
        deepest = max(deepest, depth + 1)
        pending.extend((child, depth + 1) for child in node)
    return deepest


# The network an IPv6 client is counted by: a subscriber, a host or a cloud VM is routinely given a
# whole /64 (RFC 6177, RFC 8273), so each of its addresses is no more another client than each port.
IPV6_CLIENT_PREFIX = 64


def address_bucket(address: str) -> str:
    """Who a client address counts as, for limits and throttles: an IPv4 address is itself, an IPv6
    address its /64 (`2001:db8:1:2::/64`); an IPv4 address written as IPv6 (`::ffff:192.0.2.1`)
    is the IPv4 address. Anything that is not an address (a Unix socket's peer) stays as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return str(ip)


def forwarded_client(request: web.BaseRequest) -> str:
    """The client's address as the gateway found it: the X-Forwarded-For it sets on every request
    it passes on, after dropping whatever the client wrote there. A service is reached only
    through the gateway (the network policies and compose publish no service port), so the header
    is the gateway's own; without it (a request made to the service directly, as tests do), the
    peer is the client."""
    forwarded = request.headers.get("X-Forwarded-For", "").strip()
    try:
        return str(ipaddress.ip_address(forwarded))
    except ValueError:
        return request.remote or "unknown"


def cause_of(request: web.Request) -> Cause:
    """The request as the cause of the events it leads to: it starts a story (the correlation id)."""
    return Cause(correlation_id=request[REQUEST_ID], causation_id=request[REQUEST_ID])


@web.middleware
async def security_headers_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The security headers on every response: answers, problems, files and redirects alike."""
    try:
        response = await handler(request)
    except web.HTTPException as http_error:  # only statuses under 400 get past the problem middleware
        _add_security_headers(http_error.headers)
        raise
    _add_security_headers(response.headers)
    return response


def _add_security_headers(headers: MutableMapping[str, str]) -> None:
    headers.update(SECURITY_HEADERS)
    for name, value in SECURITY_HEADER_DEFAULTS.items():
        headers.setdefault(name, value)


def hide_server_version() -> None:
    """Name no version even in the answers aiohttp's protocol layer gives before any middleware runs
    (a request it cannot parse gets a plain 400 with aiohttp's default `Server: Python/x aiohttp/y`).
    aiohttp offers no setting for it; the value is a module constant read when each answer is sent.
    """
    setattr(web_response, "SERVER_SOFTWARE", SERVER_NAME)  # noqa: B010 (not a re-exported name)


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the caller's X-Request-ID or make one; bind it to every log line; echo it back.

    The request id is the correlation id of everything the request leads to (events included).
    A made-up one is short, because people read it in logs and type it into the flow page's filter:
    64 random bits are plenty to tell requests apart."""
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = offered if _ACCEPTABLE_REQUEST_ID.match(offered) else secrets.token_hex(8)
    request[REQUEST_ID] = request_id
    with structlog.contextvars.bound_contextvars(correlation_id=request_id):
        try:
            response = await handler(request)
        except web.HTTPException as http_error:
            http_error.headers[REQUEST_ID_HEADER] = request_id
            raise
        response.headers[REQUEST_ID_HEADER] = request_id
        return response


def observing_middleware(metrics: Metrics, tracing: Tracing, *, trust_incoming_traces: bool) -> Any:
    """One log line, one trace span and the metrics of each request: method, route, status, duration."""

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        with tracing.server_span(request, trust_incoming=trust_incoming_traces) as span:
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as http_error:
                status = http_error.status
                raise
            finally:
                seconds = time.perf_counter() - started
                record_status(span, status)
                metrics.observe_request(request, status, seconds)
                record = log.debug if request.path in QUIET_PATHS and status < 400 else log.info
                record(
                    "http request",
                    method=request.method,
                    path=request.path,
                    status=status,
                    ms=round(seconds * 1000, 1),
                )

    return observe


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as problem+json; nothing internal (trace, SQL, hostname) leaks out."""
    try:
        return await handler(request)
    except Problem as problem:
        return problem.to_response()
    except web.HTTPException as http_error:
        if http_error.status < 400:
            raise
        headers = {k: v for k, v in http_error.headers.items() if k in {"Allow", "Retry-After"}}
        return Problem(http_error.status, _public_detail(http_error), headers=headers).to_response()
    except asyncio.CancelledError:
        raise
    except DATABASE_NOT_ANSWERING as error:
        # The database is restarting, unreachable or too slow (a statement timed out): 503 tells the
        # client to try again soon, where 500 would say that we have a bug.
        log.warning("database unavailable", method=request.method, path=request.path, error=repr(error))
        return Problem(
            503, "A dependency is briefly unavailable; try again.", headers={"Retry-After": "1"}
        ).to_response()
    except Exception:
        log.exception("unhandled error", method=request.method, path=request.path)
        return Problem(500, "An unexpected error occurred; it has been logged.").to_response()


def _public_detail(http_error: web.HTTPException) -> str | None:
    match http_error.status:
        case 404:
            return "No such resource."
        case 405:
            return f"Allowed methods: {http_error.headers.get('Allow', 'none')}."
        case 413:
            return "The request body is too large."
    return None


def standard_middlewares(metrics: Metrics, tracing: Tracing, *, edge: bool = False) -> list[Any]:
    """Outermost first: the security headers go on every response, problems included; the request
    id must wrap the log line, which must see the final status. At the `edge` (the gateway), a
    client's trace context is not trusted: each request starts its own trace."""
    return [
        security_headers_middleware,
        request_id_middleware,
        observing_middleware(metrics, tracing, trust_incoming_traces=not edge),
        problem_middleware,
    ]


def health_routes(
    checks: Mapping[str, ReadinessCheck],
    *,
    reported: Mapping[str, ReadinessCheck] | None = None,
) -> list[web.RouteDef]:
    """/healthz says the process is alive; /readyz runs every check, concurrently, and is ready when
    every one of `checks` passes. The `reported` ones are run and shown alongside, but do not decide
    readiness (the gateway's upstreams: see gateway/app.py)."""
    every_check = {**(reported or {}), **checks}

    async def healthz(_: web.Request) -> web.Response:
        return json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        names = list(every_check)
        outcomes = await asyncio.gather(
            *(asyncio.wait_for(every_check[name](), READINESS_CHECK_TIMEOUT) for name in names),
            return_exceptions=True,
        )
        report = {
            name: "ok" if outcome is None else _describe_failure(outcome)
            for name, outcome in zip(names, outcomes, strict=True)
        }
        if all(report[name] == "ok" for name in checks):
            return json_response({"status": "ready", "checks": report})
        raise Problem(503, "A dependency is not ready.", title="Not ready", extensions={"checks": report})

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


def _describe_failure(outcome: BaseException | None) -> str:
    if isinstance(outcome, TimeoutError):
        return "timeout"
    return "unavailable"
