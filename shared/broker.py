"""RabbitMQ connection. aio-pika's robust connection reconnects by itself once it has connected,
but its first connect fails at once when the broker is not up yet, so that one is retried here."""

import asyncio
import re
from typing import TypeVar

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from shared.retry import retry_until_deadline

ConnectionT = TypeVar("ConnectionT", bound=aio_pika.Connection)

# Failures that mean "the broker cannot be reached right now", and nothing about the message being
# published or acked: the connection or its channel is gone (a robust one is coming back), or the
# broker did not confirm in time. A message the broker returned or refused (DeliveryError) is not one.
BROKER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    ConnectionError,  # aiormq's connection errors among them
    aiormq.exceptions.ChannelClosed,
    aiormq.exceptions.ChannelInvalidStateError,
    aio_pika.exceptions.ChannelInvalidStateError,
    TimeoutError,
)
CONNECT_TIMEOUT = 5.0


async def connected(connection: ConnectionT, *, handshake_timeout: float = CONNECT_TIMEOUT) -> ConnectionT:
    """Connect `connection`, or close it if that fails. aio_pika.connect() would leave a failed (or
    cancelled) attempt's half-made connection to the garbage collector, which may find it with no
    event loop left to close it on."""
    try:
        await connection.connect(timeout=handshake_timeout)
    except StopAsyncIteration as error:
        await asyncio.shield(connection.close())
        # aiormq's word for a socket that was at its end before the broker's first frame: a broker
        # that is starting, or a TCP proxy in front of one that is down. As it is, it would escape the
        # start-up retry, and end the async generator (a cleanup context) it crossed.
        raise ConnectionError("the broker closed the connection before the AMQP handshake") from error
    except BaseException:
        await asyncio.shield(connection.close())
        raise
    return connection


async def connect_once(url: str, *, handshake_timeout: float = CONNECT_TIMEOUT) -> aio_pika.Connection:
    """A plain connection, for a tool's short job: no reconnecting, no retry."""
    return await connected(
        aio_pika.Connection(aio_pika.connection.make_url(url)), handshake_timeout=handshake_timeout
    )


async def connect_broker(url: str, *, startup_timeout: float) -> AbstractRobustConnection:
    async def connect() -> AbstractRobustConnection:
        return await connected(aio_pika.RobustConnection(aio_pika.connection.make_url(url)))

    return await retry_until_deadline(connect, what="rabbitmq", deadline_seconds=startup_timeout)


async def check_broker(connection: AbstractRobustConnection) -> None:
    """Ready only while a live AMQP connection exists, not while the robust one is reconnecting."""
    transport = connection.transport
    if connection.is_closed or transport is None or transport.connection.is_closed:
        raise ConnectionError("not connected to RabbitMQ")


async def broker_version(channel: AbstractChannel) -> tuple[int, ...]:
    """The version the broker announced when the channel's connection opened: (4, 0, 5) for
    RabbitMQ 4.0.5; () if it announced none that reads as one."""
    underlay = await channel.get_underlay_channel()
    announced = underlay.connection.server_properties.get("version", "")
    if isinstance(announced, bytes):
        announced = announced.decode(errors="replace")
    found = re.match(r"\d+(?:\.\d+)*", str(announced))
    return tuple(int(part) for part in found[0].split(".")) if found else ()
