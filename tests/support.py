"""Helpers for tests: waiting on a condition with a deadline, key pairs, a TCP relay."""

import asyncio
import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import asyncpg
from aiohttp import web

from users_service.keygen import ensure_keypair

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `probe` until it returns something other than None or False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await probe()
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {what or probe}")
        await asyncio.sleep(interval)


@dataclasses.dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_key_pair(directory: Path) -> KeyPair:
    pair = KeyPair(private=directory / "jwt-private.pem", public=directory / "jwt-public.pem")
    ensure_keypair(pair.private, pair.public)
    return pair


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


# The local Postgres (as its superuser) and RabbitMQ that the tests, and `make bench`, make their
# throwaway databases and virtual hosts on.
ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def dsn_for(database: str) -> str:
    """The admin DSN, pointed at another database."""
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


async def drop_databases(names: list[str]) -> None:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
