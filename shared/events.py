"""Every event of the system, defined once, and the CloudEvents envelope that carries them.

Producers and consumers import the same dataclasses from here, so the contract of an event lives in
exactly one place. On the wire an event is a CloudEvents 1.0 document in structured JSON mode; its
`type` is also the AMQP routing key.
"""

import dataclasses
import datetime
import typing
import uuid
from typing import Any, ClassVar, Self

import orjson

SPEC_VERSION = "1.0"


class InvalidEvent(ValueError):
    """The message is not an envelope we understand: it can never succeed, so it is dead-lettered."""


@dataclasses.dataclass(frozen=True)
class Event:
    """An event's payload (`data`). Subclasses name the type and the data's version."""

    TYPE: ClassVar[str]
    DATAVERSION: ClassVar[int] = 1

    def to_data(self) -> dict[str, Any]:
        return {
            field.name: str(value) if isinstance(value, uuid.UUID) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_data(cls, data: object) -> Self:
        """Build the event from its `data`, checking every field's presence and type."""
        if not isinstance(data, dict):
            raise InvalidEvent(f"{cls.TYPE}: data is not an object")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name not in data:
                raise InvalidEvent(f"{cls.TYPE}: data.{field.name} is missing")
            values[field.name] = _typed(data[field.name], hints[field.name], f"{cls.TYPE}: data.{field.name}")
        return cls(**values)


def _typed(value: object, expected: type, where: str) -> object:
    if expected is uuid.UUID:
        try:
            return uuid.UUID(str(value))
        except ValueError:
            raise InvalidEvent(f"{where} is not a UUID") from None
    # bool is an int in Python; an amount of True cents is still a bug.
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise InvalidEvent(f"{where} is not a {expected.__name__}")
    return value


@dataclasses.dataclass(frozen=True)
class UserRegistered(Event):
    TYPE = "users.user.registered"
    user_id: uuid.UUID
    name: str
    credit_limit_cents: int


@dataclasses.dataclass(frozen=True)
class OrderCreated(Event):
    TYPE = "orders.order.created"
    order_id: uuid.UUID
    user_id: uuid.UUID
    total_cents: int


@dataclasses.dataclass(frozen=True)
class CreditReserved(Event):
    TYPE = "users.credit.reserved"
    order_id: uuid.UUID
    user_id: uuid.UUID
    amount_cents: int


@dataclasses.dataclass(frozen=True)
class CreditRejected(Event):
    TYPE = "users.credit.rejected"
    order_id: uuid.UUID
    user_id: uuid.UUID
    reason: str  # insufficient_credit, unknown_user or order_cancelled


@dataclasses.dataclass(frozen=True)
class OrderApproved(Event):
    TYPE = "orders.order.approved"
    order_id: uuid.UUID
    user_id: uuid.UUID


@dataclasses.dataclass(frozen=True)
class OrderRejected(Event):
    TYPE = "orders.order.rejected"
    order_id: uuid.UUID
    user_id: uuid.UUID
    reason: str


@dataclasses.dataclass(frozen=True)
class OrderCancelled(Event):
    TYPE = "orders.order.cancelled"
    order_id: uuid.UUID
    user_id: uuid.UUID
    previous_status: str


@dataclasses.dataclass(frozen=True)
class CreditReleased(Event):
    TYPE = "users.credit.released"
    order_id: uuid.UUID
    user_id: uuid.UUID
    amount_cents: int


EVENT_TYPES: dict[str, type[Event]] = {
    event.TYPE: event
    for event in (
        UserRegistered,
        OrderCreated,
        CreditReserved,
        CreditRejected,
        OrderApproved,
        OrderRejected,
        OrderCancelled,
        CreditReleased,
    )
}


@dataclasses.dataclass(frozen=True)
class Cause:
    """Why an event happens: the request or event that led to it (for tracing a story end to end).

    `correlation_id` is the X-Request-ID of the HTTP request that started the story and is passed
    along unchanged; `causation_id` is the id of the request or event that directly caused this one.
    """

    correlation_id: str
    causation_id: str


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A CloudEvents 1.0 envelope (structured JSON mode) with the system's extension attributes."""

    id: uuid.UUID
    source: str
    type: str
    time: datetime.datetime
    data: dict[str, Any]
    dataversion: int
    correlationid: str
    causationid: str

    @classmethod
    def wrap(cls, event: Event, *, source: str, cause: Cause) -> "Envelope":
        return cls(
            id=uuid.uuid4(),
            source=source,
            type=event.TYPE,
            time=datetime.datetime.now(datetime.UTC),
            data=event.to_data(),
            dataversion=event.DATAVERSION,
            correlationid=cause.correlation_id,
            causationid=cause.causation_id,
        )

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "specversion": SPEC_VERSION,
                "id": str(self.id),
                "source": self.source,
                "type": self.type,
                "time": self.time,
                "datacontenttype": "application/json",
                "dataversion": self.dataversion,
                "correlationid": self.correlationid,
                "causationid": self.causationid,
                "data": self.data,
            },
            option=orjson.OPT_UTC_Z,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> "Envelope":
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidEvent("the body is not JSON") from None
        if not isinstance(document, dict) or document.get("specversion") != SPEC_VERSION:
            raise InvalidEvent("the body is not a CloudEvents 1.0 document")
        try:
            envelope = cls(
                id=uuid.UUID(document["id"]),
                source=_string(document, "source"),
                type=_string(document, "type"),
                time=datetime.datetime.fromisoformat(document["time"]),
                data=document["data"],
                dataversion=int(document.get("dataversion", 1)),
                correlationid=_string(document, "correlationid"),
                causationid=_string(document, "causationid"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InvalidEvent(f"the envelope is malformed: {error!r}") from None
        return envelope

    def event(self) -> Event:
        """The typed event inside; an unknown type or bad data is an InvalidEvent."""
        event_class = EVENT_TYPES.get(self.type)
        if event_class is None:
            raise InvalidEvent(f"unknown event type {self.type!r}")
        if self.dataversion != event_class.DATAVERSION:
            raise InvalidEvent(f"{self.type} has no data version {self.dataversion}")
        return event_class.from_data(self.data)

    def log_fields(self) -> dict[str, str]:
        """What a log line about this event shows: its type, a short subject id, its story's id."""
        fields = {"type": self.type, "correlation_id": self.correlationid}
        for key, label in (("order_id", "order"), ("user_id", "user")):
            if isinstance(self.data.get(key), str):
                fields[label] = self.data[key][:8]
                break
        return fields

    def as_cause(self) -> Cause:
        """The cause of whatever this event leads to: same story, caused by this event."""
        return Cause(correlation_id=self.correlationid, causation_id=str(self.id))


def _string(document: dict[str, Any], key: str) -> str:
    value = document[key]
    if not isinstance(value, str) or not value:
        raise TypeError(f"{key} must be a non-empty string")
    return value
