"""Helpers for tests: waiting on a condition with a deadline, key pairs, a TCP relay."""

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

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


@contextlib.asynccontextmanager
async def tcp_relay(target_host: str, target_port: int, listen_port: int) -> AsyncIterator[None]:
    """Relay connections from `listen_port` to a real server: stands for "the server comes up now"."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(target_host, target_port)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(relay, "127.0.0.1", listen_port)
    try:
        yield
    finally:
        server.close()
        await server.wait_closed()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
