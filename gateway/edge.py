"""What the gateway refuses at the edge, before any routing to a service (OWASP API4 and API8):
oversized URLs and headers, clients over their rate, and browser pages from origins not listed.

Every refusal is a problem (problem+json, with the request id): these middlewares run inside the
standard problem middleware.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Iterable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

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


@dataclasses.dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """A token bucket per client: `burst` requests at once, refilled at `rate` per second.

    Kept in this process's memory: each gateway replica counts on its own, so N replicas let a
    client through N times as fast, and a restart forgets. Scaling out (another issue) moves the
    buckets to shared storage (Redis, with the refill done in one atomic script).
    """

    MAX_CLIENTS = 100_000  # past this, buckets that have refilled completely are forgotten

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, client: str) -> float:
        """Take one token for `client`: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.MAX_CLIENTS:
                self._forget_full(now)
            bucket = self._buckets[client] = _Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        # A full bucket holds nothing worth remembering: a new one starts full too.
        for client in [
            client
            for client, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * self.rate >= self.burst
        ]:
            del self._buckets[client]


def rate_limits(*, per_second: float, burst: int, login_per_minute: int) -> Middleware:
    requests = TokenBuckets(rate=per_second, burst=burst)
    # Sign-in is where passwords are guessed: a much stricter bucket, in addition to the general one.
    # (users_service also limits failed sign-ins per account, which no change of address evades.)
    logins = TokenBuckets(rate=login_per_minute / 60, burst=login_per_minute)

    @web.middleware
    async def limit_rate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in HEALTH_PATHS:
            return await handler(request)  # an orchestrator's probes are never refused
        # The gateway is the edge, so the peer address is the client. Behind a load balancer,
        # take it from the balancer's X-Forwarded-For instead, trusting only the balancer's entry.
        client = request.remote or "unknown"
        wait = requests.take(client)
        if not wait and (request.method, request.path) == LOGIN:
            wait = logins.take(client)
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
