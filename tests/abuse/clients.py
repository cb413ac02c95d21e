"""What the abuse tests need besides the API helpers: clients that misbehave on purpose, below what
an HTTP library lets one do, and the bystander whose service every test checks."""

import asyncio
import contextlib
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import aiohttp

from tests.e2e.api import User, final_order, order_product

# Long enough for a loaded two-core machine, short enough to tell "served" from "stuck".
BYSTANDER_DEADLINE = 30.0
# How long a misbehaving client waits for the gateway to take its request.
ABUSER_DEADLINE = 10.0
# What the bystander buys: a product of the seeded catalogue (orders_service/migrations), which no
# test changes, well within the policy's credit limit however often it is bought.
BYSTANDERS_PURCHASE = "MUG-01"


async def assert_bystander_served(http: aiohttp.ClientSession, url: str, user: User) -> None:
    """Another user's order still ends APPROVED within the deadline: the saga runs for everyone."""
    order = await order_product(http, url, user, BYSTANDERS_PURCHASE)
    decided = await final_order(http, url, user, order["id"], within=BYSTANDER_DEADLINE)
    assert decided["status"] == "APPROVED", decided


@contextlib.asynccontextmanager
async def raw_connection(url: str) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


def request_head(method: str, path: str, headers: Mapping[str, str]) -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: gateway",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def aborted_upload(url: str, path: str, headers: Mapping[str, str]) -> None:
    """Declare a 1,000-byte JSON body, send a little of it once the gateway has taken the request,
    then reset the connection (RST)."""
    async with raw_connection(url) as (reader, writer):
        head = {
            **headers,
            "Content-Type": "application/json",
            "Content-Length": "1000",
            "Expect": "100-continue",  # as curl sends it: the answer says the gateway has the head
        }
        writer.write(request_head("POST", path, head))
        await writer.drain()
        interim = await asyncio.wait_for(reader.readline(), ABUSER_DEADLINE)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        writer.write(b'{"email": "')
        await writer.drain()
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST


async def trickled_upload(url: str, path: str, headers: Mapping[str, str], *, seconds: float) -> int | None:
    """Declare a 1,000-byte body and send it a byte every 0.1 s for up to `seconds`: the status of
    the answer the gateway gives meanwhile, or None if it gave none."""
    async with raw_connection(url) as (reader, writer):
        writer.write(
            request_head(
                "POST", path, {**headers, "Content-Type": "application/json", "Content-Length": "1000"}
            )
        )
        deadline = time.monotonic() + seconds
        answer = asyncio.ensure_future(reader.readline())
        while time.monotonic() < deadline and not answer.done():
            with contextlib.suppress(ConnectionError):
                writer.write(b" ")
                await writer.drain()
            await asyncio.wait([answer], timeout=0.1)
        if not answer.done():
            answer.cancel()
            return None
        status_line = answer.result()
        return int(status_line.split()[1]) if status_line else None


async def seconds_until_closed_while_trickling_the_head(url: str, *, give_up_after: float) -> float | None:
    """Send a request's line and headers a byte every 0.1 s, never finishing: how long the server
    kept the connection open, or None if it still was after `give_up_after` seconds."""
    head = request_head("GET", "/api/v2/orders", {f"X-Slow-{n}": "x" * 20 for n in range(50)})
    started = time.monotonic()
    async with raw_connection(url) as (reader, writer):
        closed = asyncio.ensure_future(reader.read())  # whatever comes back, then EOF
        for byte in head[:-2]:  # never the blank line that ends the head
            if closed.done():
                break
            with contextlib.suppress(ConnectionError):
                writer.write(bytes([byte]))
                await writer.drain()
            await asyncio.wait([closed], timeout=0.1)
            if time.monotonic() - started > give_up_after:
                closed.cancel()
                return None
        with contextlib.suppress(ConnectionError):
            await closed
        return time.monotonic() - started


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory since it started (VmHWM, the kernel's high-water mark)."""
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.MULTILINE)
    assert found is not None, status
    return int(found.group(1)) / 1024
