"""The flow page's stream (GET /flow/events, Server-Sent Events), read as the page reads it: the
demo looks there for an event of one of its stories, as you would on the page.

The stream starts with the records the gateway holds from the recent past, then goes on live; the
demo opens it before the request whose event it looks for, so that the event cannot have come and
gone before it looks.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from demo.steps import StepFailed
from shared.http import REQUEST_ID_HEADER

EVENTS_PATH = "/flow/events"
# A stream has no end: only the connection is bounded in time; each wait for a record has a deadline.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_read=None)

Record = dict[str, Any]


class FlowStream:
    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response

    async def record(self, wanted: Callable[[Record], bool], *, within: float, what: str) -> Record:
        """The first record that is `wanted`; if none comes within `within` seconds, the step fails."""
        try:
            async with asyncio.timeout(within):
                return await self._first(wanted)
        except TimeoutError:
            raise StepFailed(f"{what} not on the flow page after {within:g} s") from None

    async def _first(self, wanted: Callable[[Record], bool]) -> Record:
        kind = ""
        async for raw in self.response.content:
            line = raw.decode().rstrip("\r\n")
            if not line:
                kind = ""  # a blank line ends an event
            elif line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "record":
                record: Record = orjson.loads(line.removeprefix("data: "))
                if wanted(record):
                    return record
        raise StepFailed("the gateway ended the flow page's stream")


@contextlib.asynccontextmanager
async def flow_stream(
    session: aiohttp.ClientSession, gateway_url: str, *, story: str
) -> AsyncIterator[FlowStream]:
    """The stream, open; a gateway without the flow page (FLOW_ENABLED=false) fails the step."""
    async with session.get(
        gateway_url.rstrip("/") + EVENTS_PATH, headers={REQUEST_ID_HEADER: story}, timeout=STREAM_TIMEOUT
    ) as response:
        if response.status == 404:
            raise StepFailed("this gateway has no flow page (FLOW_ENABLED=false)")
        if response.status != 200:
            raise StepFailed(f"GET {EVENTS_PATH}: {response.status} {response.reason or ''}".rstrip())
        yield FlowStream(response)
