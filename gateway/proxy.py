"""Forwarding one request to an upstream service and its answer back to the client.

Request bodies stream through when their length is declared; a chunked body is read up to the limit
and no further. Responses from our own services are small and bounded (pagination caps them), so
they are read whole: the client then gets either the upstream's complete answer or a clean problem
(502/503/504), never half of one.
"""

import dataclasses

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from shared.http import REQUEST_ID, REQUEST_ID_HEADER
from shared.problems import Problem

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
NOT_FORWARDED_UPSTREAM = HOP_BY_HOP | {
    "host",
    REQUEST_ID_HEADER.lower(),
    "x-forwarded-for",
    "x-forwarded-proto",
}
NOT_FORWARDED_DOWNSTREAM = HOP_BY_HOP | {"content-length", "date", "server", REQUEST_ID_HEADER.lower()}


@dataclasses.dataclass(frozen=True)
class Upstream:
    name: str
    base_url: URL


async def forward(
    request: web.Request, upstream: Upstream, session: aiohttp.ClientSession, *, max_body_bytes: int
) -> web.Response:
    url = upstream.base_url.join(request.rel_url)
    try:
        async with session.request(
            request.method,
            url,
            headers=_upstream_headers(request),
            data=await _body(request, max_body_bytes),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            return web.Response(status=answer.status, body=body, headers=_downstream_headers(answer))
    except TimeoutError:
        log.warning("upstream timed out", upstream=upstream.name)
        raise Problem(504, f"{upstream.name} did not answer in time.", title="Upstream timeout") from None
    except aiohttp.ClientConnectorError:
        log.warning("upstream unreachable", upstream=upstream.name)
        raise Problem(
            503,
            f"{upstream.name} is unavailable.",
            title="Upstream unavailable",
            headers={"Retry-After": "1"},
        ) from None
    except aiohttp.ClientError as error:
        log.warning("upstream failed", upstream=upstream.name, error=type(error).__name__)
        raise Problem(502, f"{upstream.name} gave no valid answer.", title="Bad gateway") from None


async def _body(request: web.Request, max_body_bytes: int) -> aiohttp.StreamReader | bytes | None:
    if not request.body_exists:
        return None
    declared = request.content_length
    if declared is not None:
        if declared > max_body_bytes:
            raise Problem(413, f"The request body is over {max_body_bytes} bytes.")
        return request.content  # streamed to the upstream as it arrives
    body = await request.content.read(max_body_bytes + 1)
    while len(body) <= max_body_bytes and not request.content.at_eof():
        body += await request.content.read(max_body_bytes + 1 - len(body))
    if len(body) > max_body_bytes:
        raise Problem(413, f"The request body is over {max_body_bytes} bytes.")
    return body


def _upstream_headers(request: web.Request) -> CIMultiDict[str]:
    headers = CIMultiDict(
        (name, value) for name, value in request.headers.items() if name.lower() not in NOT_FORWARDED_UPSTREAM
    )
    headers[REQUEST_ID_HEADER] = request[REQUEST_ID]
    # The gateway is the edge: it records who called, rather than trusting a client's claim.
    if request.remote:
        headers["X-Forwarded-For"] = request.remote
    headers["X-Forwarded-Proto"] = request.scheme
    return headers


def _downstream_headers(answer: aiohttp.ClientResponse) -> CIMultiDict[str]:
    return CIMultiDict(
        (name, value)
        for name, value in answer.headers.items()
        if name.lower() not in NOT_FORWARDED_DOWNSTREAM
    )
