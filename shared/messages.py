"""An event on the bus: the AMQP message that carries an envelope, and a copy of a received one.

One place decides what an event's message is: its body is the whole envelope (CloudEvents, structured
JSON mode), it is persistent, and its AMQP properties repeat the envelope's id, type and correlation id,
so that tools that show AMQP messages (the management UI among them) show them without parsing the
body. A consumer moving a message to a retry or dead-letter queue, and `make dlq-replay`, send a copy
of a received message: the same body and properties, other headers.
"""

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, HeadersType

from shared.envelope import Envelope

CLOUDEVENTS_JSON = "application/cloudevents+json; charset=utf-8"


def event_message(body: bytes, envelope: Envelope, headers: HeadersType | None = None) -> aio_pika.Message:
    """The message that publishes `envelope`, whose JSON is `body`."""
    return aio_pika.Message(
        body,
        headers=headers or {},
        content_type=CLOUDEVENTS_JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=str(envelope.id),
        type=envelope.type,
        correlation_id=envelope.correlationid,
    )


def copy_of(message: AbstractIncomingMessage, headers: HeadersType) -> aio_pika.Message:
    """A received message again, persistent, with `headers` instead of its own."""
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        correlation_id=message.correlation_id,
    )
