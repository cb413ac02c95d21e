"""A first connection to the broker that ends before the AMQP handshake has begun is "not up yet".

aiormq says so with StopAsyncIteration when the socket is already at its end when it looks for the
broker's first frame: a broker that is starting, or a TCP proxy in front of one that is down, that
took the connection and closed it at once. Raised as it is, it escapes the start-up retry, and in a
cleanup context (an async generator) it turns into "RuntimeError: async generator raised
StopAsyncIteration": the service exits at start instead of waiting (found by the chaos run, when a
replica behind a relay was started again while RabbitMQ was coming back).
"""

import aio_pika
import aiormq
import pytest
from aio_pika.abc import TimeoutType

from shared.broker import connected
from shared.retry import NOT_UP_YET


class HangsUpBeforeTheHandshake(aio_pika.Connection):
    closed_by_caller = False

    async def connect(self, timeout: TimeoutType = None) -> None:  # noqa: ASYNC109 (aio-pika's signature)
        raise StopAsyncIteration  # what aiormq raises on a socket already at its end

    async def close(self, exc: aiormq.abc.ExceptionType | None = aiormq.exceptions.ConnectionClosed) -> None:
        self.closed_by_caller = True


async def test_a_connection_closed_before_the_handshake_is_a_broker_not_up_yet() -> None:
    connection = HangsUpBeforeTheHandshake(aio_pika.connection.make_url("amqp://127.0.0.1:5672/"))
    with pytest.raises(NOT_UP_YET):
        await connected(connection)
    assert connection.closed_by_caller
