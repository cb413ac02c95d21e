"""Helpers for tests: a TCP relay to make network faults with, a test's own fake upstream, and what a
test does when this machine lacks a tool it needs."""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import aio_pika
import pytest
from aio_pika.abc import HeadersType
from aiohttp import web
from yarl import URL

from devstack.ports import free_port
from devstack.rabbitmq import Vhost
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


def with_port(url: str, port: int) -> str:
    """`url` with another port: a service pointed at a relay instead of the server behind it."""
    return str(URL(url).with_port(port))


class TcpRelay:
    """A TCP relay in front of a real server (Postgres, RabbitMQ) that a test can switch on late, or
    freeze in one direction: a network fault made on purpose, with no change to the code under test.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._upstream_flowing = asyncio.Event()
        self._upstream_flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    def hold_upstream(self) -> None:
        """Keep back every byte the client sends (requests, publishes, acks); deliver the rest."""
        self._upstream_flowing.clear()

    def release_upstream(self) -> None:
        self._upstream_flowing.set()

    def sever(self) -> None:
        """Cut every connection at once; bytes held back are lost, as on a real broken link."""
        for writer in self._writers:
            writer.transport.abort()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(
            self._pipe(client_reader, server_writer, self._upstream_flowing),
            self._pipe(server_reader, client_writer, None),
        )

    @staticmethod
    async def _pipe(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event | None
    ) -> None:
        try:
            while data := await reader.read(65536):
                if flowing is not None:
                    await flowing.wait()
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def tcp_relay(target_host: str, target_port: int, listen_port: int) -> AsyncIterator[None]:
    """Relay connections from `listen_port` to a real server: stands for "the server comes up now"."""
    relay = TcpRelay(target_host, target_port)
    relay.port = listen_port
    await relay.start()
    try:
        yield
    finally:
        await relay.close()


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
