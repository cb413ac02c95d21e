"""Forwarding one request to an upstream service and its answer back to the client.

A request body is read whole (it is small: MAX_BODY_BYTES), within REQUEST_BODY_TIMEOUT, before the
upstream is called. So a body that never arrives, trickles in, or is cut off by a reset is the
client's failure and is answered as such (408 or 400), before the upstream or its circuit breaker is
involved: once the call starts, everything it needs is in hand, and whatever goes wrong with it is
the upstream's (or the network's) doing. Streaming the body through instead would let any client
turn its own broken upload into a failed call, and a few dozen of them into an open circuit: a 503
for every other client.

Responses from our own services are small and bounded (pagination caps them), so they are read
whole: the client then gets either the upstream's complete answer or a clean problem (502/503/504),
never half of one.

Each upstream has a circuit breaker (gateway/resilience.py); a read whose upstream refused the
connection or answered 503 is retried a few times, a write never (it may have taken effect).
"""

import asyncio
import dataclasses
import functools
from collections.abc import Awaitable, Callable
from typing import Protocol

import aiohttp
import orjson
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from gateway.resilience import RETRYABLE_METHODS, CircuitBreaker, backoff_delay
from shared.http import REQUEST_ID, REQUEST_ID_HEADER
from shared.problems import BUSY, PROBLEM_JSON, Problem
from shared.tracing import Tracing

log = structlog.get_logger("proxy")

# RFC 9110 section 7.6.1: these describe one connection, so they never cross a proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Claims about who the caller is or where it connects from, which some server or proxy might trust
# (OWASP API1/API2): only the gateway may make them, so whatever a client sends is dropped. The
# services rely on the verified token alone; this keeps it so if one of them ever looks at these.
# Every X-Forwarded-* header goes too (see _upstream_headers).
IDENTITY_CLAIMS = frozenset(
    {
        "forwarded",
        "x-user-id",
        "x-user",
        "x-authenticated-user",
        "x-authenticated-userid",
        "x-auth-user",
        "x-auth-request-user",
        "x-auth-request-email",
        "x-remote-user",
        "remote-user",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-original-url",
        "x-rewrite-url",
    }
)
# A client's trace context is not passed on: at the edge, each request starts its own trace.
TRACE_CONTEXT = frozenset({"traceparent", "tracestate"})
NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | IDENTITY_CLAIMS | TRACE_CONTEXT | {"host", REQUEST_ID_HEADER.lower()}
NOT_FORWARDED_DOWNSTREAM = HOP_BY_HOP | {"content-length", "date", "server", REQUEST_ID_HEADER.lower()}


@dataclasses.dataclass(frozen=True)
class Upstream:
    name: str
    base_url: URL
    breaker: CircuitBreaker


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    retries: int  # after the first attempt
    backoff: float  # seconds before the first retry


class CallObserver(Protocol):
    """Sees each call to an upstream (the flow page's recorder, gateway/flow/recorder.py). It is
    handed the call not yet started and returns what to await: the call itself when it records
    nothing, so that an unobserved call costs nothing more."""

    def observe(
        self, request: web.Request, upstream: str, call: Awaitable[web.Response]
    ) -> Awaitable[web.Response]: ...


async def forward(
    request: web.Request,
    upstream: Upstream,
    session: aiohttp.ClientSession,
    *,
    client: str,
    max_body_bytes: int,
    body_timeout: float,
    retry: RetryPolicy,
    tracing: Tracing,
    observer: CallObserver | None = None,
) -> web.Response:
    """Call `upstream` with the request of `client` (its address, as the rate limits know it)."""
    url = upstream.base_url.join(request.rel_url)
    headers = _upstream_headers(request, client)
    body = await _body(request, max_body_bytes, body_timeout)
    retries = retry.retries if request.method in RETRYABLE_METHODS and body is None else 0
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff_delay(attempt - 1, retry.backoff))
            log.info("retrying upstream", upstream=upstream.name, attempt=attempt)
        try:
            call = functools.partial(_call, session, request.method, url, headers, body)
            response = await _attempt(request, upstream, call, headers, tracing, observer)
        except aiohttp.ClientConnectorError:
            upstream.breaker.failed()
            log.warning("upstream unreachable", upstream=upstream.name)
            if attempt < retries:
                continue
            raise Problem(
                503,
                f"{upstream.name} is unavailable.",
                title="Upstream unavailable",
                headers={"Retry-After": "1"},
            ) from None
        if response.status != 503 or _busy(response):
            upstream.breaker.succeeded()
            return response
        upstream.breaker.failed()
        if attempt == retries:
            return response  # the upstream's own 503 problem, as it said it
    raise AssertionError("unreachable: the last attempt returns or raises")


async def _attempt(
    request: web.Request,
    upstream: Upstream,
    call: Callable[[], Awaitable[web.Response]],
    headers: CIMultiDict[str],
    tracing: Tracing,
    observer: CallObserver | None,
) -> web.Response:
    """One call of the upstream, through its circuit; what cannot be retried becomes a problem here.
    An unreachable upstream (ClientConnectorError) is the caller's to retry."""
    upstream.breaker.admit()  # an open circuit answers 503 here, before any call
    try:
        with tracing.client_span(f"{request.method} {upstream.name}", headers) as span:
            answer = call()
            if observer is not None:
                answer = observer.observe(request, upstream.name, answer)
            response = await answer
            span.set_attribute("http.response.status_code", response.status)
            return response
    except aiohttp.ClientConnectorError:
        raise
    except TimeoutError:
        # Not retried: a slow upstream made slower by more calls helps no one.
        upstream.breaker.failed()
        log.warning("upstream timed out", upstream=upstream.name)
        raise Problem(504, f"{upstream.name} did not answer in time.", title="Upstream timeout") from None
    except aiohttp.ClientError as error:
        upstream.breaker.failed()
        log.warning("upstream failed", upstream=upstream.name, error=type(error).__name__)
        raise Problem(502, f"{upstream.name} gave no valid answer.", title="Bad gateway") from None
    except BaseException:
        upstream.breaker.abandoned()  # cancelled (the client went away): no verdict on the upstream
        raise


def _busy(response: web.Response) -> bool:
    """Whether a 503 is the upstream refusing one kind of work it has no room for right now (its
    password hashes, say), rather than failing. Such a refusal shows the upstream up and
    answering, so it never counts against the circuit: otherwise a burst of sign-ups from
    anywhere would open it, and cut every other route of the service for everyone."""
    if response.content_type != PROBLEM_JSON or not isinstance(response.body, bytes):
        return False
    try:
        problem = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(problem, dict) and problem.get("type") == BUSY


async def _call(
    session: aiohttp.ClientSession, method: str, url: URL, headers: CIMultiDict[str], body: bytes | None
) -> web.Response:
    async with session.request(method, url, headers=headers, data=body, allow_redirects=False) as answer:
        content = await answer.read()
        return web.Response(status=answer.status, body=content, headers=_downstream_headers(answer))


async def _body(request: web.Request, max_body_bytes: int, within: float) -> bytes | None:
    """The whole request body (see the module's notes), or a problem that names the client's fault."""
    if not request.body_exists:
        return None
    declared = request.content_length
    if declared is not None and declared > max_body_bytes:
        raise Problem(413, f"The request body is over {max_body_bytes} bytes.")
    body = bytearray()
    try:
        async with asyncio.timeout(within):
            # At most one byte over the limit is read: enough to know that a body without a
            # declared length is too long.
            while len(body) <= max_body_bytes and not request.content.at_eof():
                body += await request.content.read(max_body_bytes + 1 - len(body))
    except TimeoutError:
        raise Problem(408, f"The request body did not arrive within {within:g} seconds.") from None
    except (ConnectionError, web.RequestPayloadError):
        # The client reset the connection, or sent a body that does not match its framing. It will
        # most likely never read this answer; the log line records what happened.
        raise Problem(400, "The request body was cut off or malformed.") from None
    if len(body) > max_body_bytes:
        raise Problem(413, f"The request body is over {max_body_bytes} bytes.")
    return bytes(body)


def _upstream_headers(request: web.Request, client: str) -> CIMultiDict[str]:
    headers = CIMultiDict(
        (name, value)
        for name, value in request.headers.items()
        if name.lower() not in NOT_FORWARDED_UPSTREAM and not name.lower().startswith("x-forwarded-")
    )
    headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    # The gateway is the edge: it records who called (the peer, or the client a trusted proxy
    # names), rather than passing on a client's claim. users_service throttles sign-ins by it.
    headers["X-Forwarded-For"] = client
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


def _downstream_headers(answer: aiohttp.ClientResponse) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, value)
        for name, value in answer.headers.items()
        if name.lower() not in NOT_FORWARDED_DOWNSTREAM
    )
