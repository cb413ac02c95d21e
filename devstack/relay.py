"""A TCP relay in front of a real server (Postgres, RabbitMQ): network faults made on purpose, with no
change to the code under test. A process is pointed at the relay instead of the server
(`with_port`), and the relay can then cut every connection at once, or hold back what the client
sends."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from yarl import URL

from devstack.ports import free_port


def with_port(url: str, port: int) -> str:
    """`url` with another port: a service pointed at a relay instead of the server behind it."""
    return str(URL(url).with_port(port))


class TcpRelay:
    """Relays connections from a port of its own to `target`, and can break them on demand."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._upstream_flowing = asyncio.Event()
        self._upstream_flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    @property
    def connections(self) -> int:
        """Connections relayed right now."""
        return len(self._writers) // 2

    def hold_upstream(self) -> None:
        """Keep back every byte the client sends (requests, publishes, acks); deliver the rest."""
        self._upstream_flowing.clear()

    def release_upstream(self) -> None:
        self._upstream_flowing.set()

    def sever(self) -> int:
        """Cut every connection at once; bytes held back are lost, as on a real broken link. Returns
        how many connections it cut."""
        cut = self.connections
        for writer in list(self._writers):
            writer.transport.abort()
        return cut

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
        pair = {client_writer, server_writer}
        self._writers |= pair
        try:
            await asyncio.gather(
                self._pipe(client_reader, server_writer, self._upstream_flowing),
                self._pipe(server_reader, client_writer, None),
            )
        finally:
            self._writers -= pair  # a long run opens many connections: keep only the live ones

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
        except OSError:
            pass  # the other side, or sever(), broke the connection: so does the relay
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
