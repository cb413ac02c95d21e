"""What the gateway refuses at the edge, before any routing to a service (OWASP API4 and API8):
oversized URLs and headers, clients over their rate, and browser pages from origins not listed.

Every refusal is a problem (problem+json, with the request id): these middlewares run inside the
standard problem middleware.
"""

import ipaddress
import math
from collections.abc import Iterable, Mapping, Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.ratelimit import SharedTokenBuckets
from shared.http import HEALTH_PATHS, address_bucket
from shared.problems import Problem

# aiohttp's own parser holds every header of a request in memory before any middleware can look at
# them, and refuses a longer request line or header with a plain-text 400 of its own. Its limits sit
# just above ours: a request a little over our limits still gets our 414 or 431 as a problem, and a
# request can make the parser hold at most MAX_HEADER_COUNT + PARSER_HEADER_HEADROOM headers, each
# name and value within MAX_HEADER_BYTES + PARSER_HEADROOM bytes (about 2 MiB with the defaults,
# where 400 headers of 72 KiB names and values once allowed nearly 60 MiB).
# (shared/service.run passes them to the server.)
PARSER_HEADROOM = 1024
MAX_HEADER_COUNT = 100
PARSER_HEADER_HEADROOM = 20

# Each in both API versions, which share one allowance: a client cannot double it by alternating.
LOGIN = (("POST", "/api/auth/token"), ("POST", "/api/v2/auth/token"))
REGISTRATION = (("POST", "/api/users"), ("POST", "/api/v2/users"))
RATE_LIMITED = "urn:eda-reference:problem:rate-limited"


def server_limits(*, max_url_bytes: int, max_header_bytes: int, header_timeout: float) -> dict[str, float]:
    """Arguments for aiohttp's server: its parser's limits, just above the ones enforced here, and
    how long a client may take to send a request's head.

    aiohttp has no timeout of its own for the request head, but its keep-alive timer closes any
    connection that is waiting for a request, complete line and headers, when the timer runs out:
    it starts when the connection opens and again after each answer, and bytes arriving do not
    restart it. So a client trickling its headers a byte at a time is cut off after
    `header_timeout`, however it paces them, and an idle connection is closed after as long.
    """
    return {
        "max_line_size": max_url_bytes + PARSER_HEADROOM,
        "max_field_size": max_header_bytes + PARSER_HEADROOM,
        "max_headers": MAX_HEADER_COUNT + PARSER_HEADER_HEADROOM,
        "keepalive_timeout": header_timeout,
    }


def size_limits(*, max_url_bytes: int, max_header_bytes: int, max_headers_total_bytes: int) -> Middleware:
    @web.middleware
    async def limit_sizes(request: web.Request, handler: Handler) -> web.StreamResponse:
        if len(request.raw_path) > max_url_bytes:
            raise Problem(414, f"The URL is over {max_url_bytes} bytes.")
        # As on the wire: "name: value\r\n" for each header.
        sizes = [len(name) + len(value) + 4 for name, value in request.raw_headers]
        if any(size > max_header_bytes for size in sizes):
            raise Problem(431, f"A request header is over {max_header_bytes} bytes.")
        if sum(sizes) > max_headers_total_bytes or len(sizes) > MAX_HEADER_COUNT:
            raise Problem(431, "The request headers are too large.")
        return await handler(request)

    return limit_sizes


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: web.BaseRequest, trusted_proxies: Sequence[Network]) -> str:
    """Who the client is, for its limits: the peer, unless the peer is a proxy we trust (a load
    balancer or an ingress in front of the gateway). Then it is the rightmost X-Forwarded-For entry
    that is not a trusted proxy: each proxy appends the address it saw, so the entries to the left
    of the last trusted hop are whatever the client wrote, and can be forged."""
    peer = request.remote or "unknown"
    if not _trusted(peer, trusted_proxies):
        return peer
    hops = [
        hop.strip() for header in request.headers.getall("X-Forwarded-For", []) for hop in header.split(",")
    ]
    for hop in reversed([hop for hop in hops if hop]):
        if not _trusted(hop, trusted_proxies):
            return hop
    return peer


def _trusted(address: str, trusted_proxies: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted_proxies)


def rate_limits(
    requests: SharedTokenBuckets,
    stricter: Mapping[tuple[str, str], SharedTokenBuckets],
    *,
    trusted_proxies: Sequence[Network] = (),
) -> Middleware:
    """429 with Retry-After for a client over its limit: `requests` counts every request, and the
    `stricter` limits of some operations (method, path) count those on top: sign-in, where passwords
    are guessed, and registration, where each request costs a password hash (users_service also
    limits failed sign-ins per account and client, and bounds the hashes it runs at once).

    A client is its address, but an IPv6 client is its /64: one subscriber or host is routinely
    given a whole /64, so counting each address would give it 2^64 allowances."""

    @web.middleware
    async def limit_rate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in HEALTH_PATHS:
            return await handler(request)  # an orchestrator's probes are never refused
        client = address_bucket(client_address(request, trusted_proxies))
        wait = await requests.take(client)
        operation_limit = stricter.get((request.method, request.path))
        if not wait and operation_limit is not None:
            wait = await operation_limit.take(client)
        if wait:
            seconds = max(1, math.ceil(wait))
            raise Problem(
                429,
                f"Too many requests; try again in {seconds} seconds.",
                type=RATE_LIMITED,
                headers={"Retry-After": str(seconds)},
            )
        return await handler(request)

    return limit_rate


CORS_ALLOWED_METHODS = "GET, POST, PUT"
CORS_ALLOWED_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-Request-ID"
CORS_EXPOSED_HEADERS = "Location, Retry-After, X-Request-ID"
CORS_MAX_AGE = "600"


def cors(app: web.Application, allowed_origins: Iterable[str]) -> None:
    """Let browser pages from the listed origins call the API; none when the list is empty.

    Tokens travel in the Authorization header, never in cookies, so credentials are never allowed
    and no origin is ever reflected unless it is listed exactly.
    """
    origins = frozenset(allowed_origins)
    if not origins:
        return  # off: no Access-Control-* header on any response

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.method == "OPTIONS"
            and request.headers.get("Origin") in origins
            and "Access-Control-Request-Method" in request.headers
        ):
            return web.Response(
                status=204,
                headers={
                    "Access-Control-Allow-Methods": CORS_ALLOWED_METHODS,
                    "Access-Control-Allow-Headers": CORS_ALLOWED_HEADERS,
                    "Access-Control-Max-Age": CORS_MAX_AGE,
                },
            )
        return await handler(request)  # an unlisted origin's preflight gets the usual 404/405

    async def allow_origin(request: web.BaseRequest, response: web.StreamResponse) -> None:
        # A signal rather than a middleware: it also reaches problems and every other answer.
        response.headers.add("Vary", "Origin")
        origin = request.headers.get("Origin")
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED_HEADERS

    app.middlewares.append(preflight)
    app.on_response_prepare.append(allow_origin)
