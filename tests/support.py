"""Helpers for tests: a TCP relay to make network faults with (devstack/relay.py), a test's own fake
upstream, a raw publish, one of the project's commands run to its end, and what a test does when this
machine lacks a tool it needs."""

import asyncio
import contextlib
import dataclasses
import os
import sys
from collections.abc import AsyncIterator, Mapping

import aio_pika
import pytest
from aio_pika.abc import HeadersType
from aiohttp import web

from devstack.ports import free_port
from devstack.processes import ROOT
from devstack.rabbitmq import Vhost
from devstack.relay import TcpRelay as TcpRelay
from devstack.relay import tcp_relay as tcp_relay
from devstack.relay import with_port as with_port
from shared.broker import connect_once
from shared.bus_contract import bus
from shared.topology import EXCHANGE


def require_tool(found: object, message: str) -> None:
    """A test that needs a tool (`found` is None when it is not installed) is skipped on a machine
    without it, with the reason; under CI (CI set) it fails instead: CI installs every tool, so a
    missing one there is a broken set-up, not a machine that cannot run the test."""
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@dataclasses.dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: str
    stderr: str


async def run_python(*arguments: str, within: float, env: Mapping[str, str] | None = None) -> Finished:
    """Run `python ARGUMENTS...` with this interpreter, from the repository's root and with `env`
    added to the environment, as a user runs one of the project's commands; wait for it to end. One
    that has not ended within `within` seconds is killed, and fails the test."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *arguments,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"python {' '.join(arguments)} did not end within {within:g} s") from None
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """Serve a test's own aiohttp app (a fake upstream) on a free local port; yield its URL."""
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def publish_raw(
    broker: Vhost,
    body: bytes,
    routing_key: str,
    *,
    sender: str | None = None,
    headers: HeadersType | None = None,
    message_type: str | None = None,
) -> None:
    """Publish bytes to the events exchange as broker user `sender` does, its user id on the message
    (by default the publisher the bus's contract names for the routing key, else the administrator):
    a test's stand-in for a peer, good or bad."""
    sender = sender or bus().publisher.get(routing_key)
    url = broker.url_for(sender) if sender is not None else broker.admin_url
    async with await connect_once(url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        message = aio_pika.Message(
            body,
            headers=headers or {},
            type=message_type or routing_key,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            user_id=sender,
        )
        await exchange.publish(message, routing_key=routing_key)
