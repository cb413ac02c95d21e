"""What the gateway refuses at the edge, before any routing to a service (OWASP API4 and API8):
oversized URLs and headers, clients over their rate, and browser pages from origins not listed.

Every refusal is a problem (problem+json, with the request id): these middlewares run inside the
standard problem middleware.
"""

import ipaddress
import math
from collections.abc import Iterable, Sequence

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.ratelimit import SharedTokenBuckets
from shared.http import HEALTH_PATHS
from shared.problems import Problem

# aiohttp's own parser refuses a longer request line or header with a plain-text 400 before any
# middleware could answer, so its hard limits sit this far above ours: every request between the
# two gets our 414 or 431 as a problem. (shared/service.run passes them to the server.)
PARSER_HEADROOM = 64 * 1024
MAX_HEADER_COUNT = 100
PARSER_MAX_HEADERS = 4 * MAX_HEADER_COUNT

LOGIN = ("POST", "/api/auth/token")
RATE_LIMITED = "urn:eda-reference:problem:rate-limited"


def parser_limits(max_url_bytes: int, max_header_bytes: int) -> dict[str, int]:
    """Handler arguments for aiohttp's server: its limits, well above the ones enforced here."""
    return {
        "max_line_size": max_url_bytes + PARSER_HEADROOM,
        "max_field_size": max_header_bytes + PARSER_HEADROOM,
        "max_headers": PARSER_MAX_HEADERS,
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
    requests: SharedTokenBuckets, logins: SharedTokenBuckets, *, trusted_proxies: Sequence[Network] = ()
) -> Middleware:
    """429 with Retry-After for a client over its limit: `requests` counts every request, `logins`
    the sign-ins on top (users_service also limits failed sign-ins per account, which no change of
    address evades)."""

    @web.middleware
    async def limit_rate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in HEALTH_PATHS:
            return await handler(request)  # an orchestrator's probes are never refused
        client = client_address(request, trusted_proxies)
        wait = await requests.take(client)
        if not wait and (request.method, request.path) == LOGIN:
            wait = await logins.take(client)
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


CORS_ALLOWED_METHODS = "GET, POST"
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
