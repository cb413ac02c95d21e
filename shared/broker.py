"""RabbitMQ connection. aio-pika's robust connection reconnects by itself once it has connected,
but its first connect fails at once when the broker is not up yet, so that one is retried here."""

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from shared.retry import retry_until_deadline


async def connect_broker(url: str, *, startup_timeout: float) -> AbstractRobustConnection:
    async def connect() -> AbstractRobustConnection:
        return await aio_pika.connect_robust(url, timeout=5)

    return await retry_until_deadline(connect, what="rabbitmq", deadline_seconds=startup_timeout)


async def check_broker(connection: AbstractRobustConnection) -> None:
    """Ready only while a live AMQP connection exists, not while the robust one is reconnecting."""
    transport = connection.transport
    if connection.is_closed or transport is None or transport.connection.is_closed:
        raise ConnectionError("not connected to RabbitMQ")
