"""An event on the bus: the AMQP message that carries an envelope, a copy of a received one, and
who sent it.

One place decides what an event's message is: its body is the whole envelope (CloudEvents, structured
JSON mode), it is persistent, and its AMQP properties repeat the envelope's id, type and correlation id,
so that tools that show AMQP messages (the management UI among them) show them without parsing the
body. Its `user-id` property names the broker user who published it, which the broker checks.

A consumer moving a message to a retry or dead-letter queue sends a copy of it: the same body and
properties, other headers, and its own user id (the broker would refuse another's). The copy keeps
who sent the original in SENDER_HEADER, which `sender_of` believes only on a copy from the consumer
itself: anyone else who sets that header is believed to be who they are.
"""

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, HeadersType

from shared.envelope import Envelope

CLOUDEVENTS_JSON = "application/cloudevents+json; charset=utf-8"
SENDER_HEADER = "x-original-user-id"


def event_message(
    body: bytes, envelope: Envelope, *, user_id: str | None, headers: HeadersType | None = None
) -> aio_pika.Message:
    """The message that publishes `envelope`, whose JSON is `body`, as broker user `user_id`."""
    return stored_event_message(
        body,
        event_id=str(envelope.id),
        event_type=envelope.type,
        correlation_id=envelope.correlationid,
        user_id=user_id,
        headers=headers,
    )


def stored_event_message(
    body: bytes,
    *,
    event_id: str,
    event_type: str,
    correlation_id: str,
    user_id: str | None,
    headers: HeadersType | None = None,
) -> aio_pika.Message:
    """The same message, from what an outbox row keeps beside the body: the relay sends a body as it
    was stored, without parsing it again."""
    return aio_pika.Message(
        body,
        headers=headers or {},
        content_type=CLOUDEVENTS_JSON,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=event_id,
        type=event_type,
        correlation_id=correlation_id,
        user_id=user_id,
    )


def copy_of(
    message: AbstractIncomingMessage, headers: HeadersType, *, user_id: str | None, sender: str | None
) -> aio_pika.Message:
    """A received message again, persistent, with `headers` instead of its own, published as broker
    user `user_id`; a consumer's copy also says who sent the original (`sender`)."""
    return aio_pika.Message(
        message.body,
        headers={**headers, SENDER_HEADER: sender or ""} if sender is not None else headers,
        content_type=message.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
        correlation_id=message.correlation_id,
        user_id=user_id,
    )


def sender_of(message: AbstractIncomingMessage, own_user: str | None) -> str | None:
    """The broker user who sent the message: its `user-id` property, which the broker checked; or, on
    a copy that `own_user` made of a message it received, who sent that one."""
    if own_user is not None and message.user_id == own_user:
        original = (message.headers or {}).get(SENDER_HEADER)
        return original if isinstance(original, str) and original else own_user
    return message.user_id
