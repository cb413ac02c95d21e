"""Every event of the system, defined once: past-tense dataclasses, and the versions consumers accept.

Producers and consumers import the same dataclasses from here; shared/envelope.py carries them on the
wire. What may be on the wire is defined by the JSON Schemas in shared/contracts/ (loaded by
`shared.schemas`); a unit test holds each dataclass to its schema, so the two cannot drift apart.

A consumer accepts each (type, data version) that `DECODERS` lists, and decodes all the versions of
a type into the same dataclass, so that its handler never sees versions (docs/events.md).
"""

import dataclasses
import typing
import uuid
from collections.abc import Callable
from typing import Any, ClassVar, Self

from shared import schemas


@dataclasses.dataclass(frozen=True)
class Event:
    """An event's payload (`data`). Subclasses name the type, and the data version that producers
    emit it as: its schema is shared/contracts/events/<TYPE>.v<DATAVERSION>.json."""

    TYPE: ClassVar[str]
    DATAVERSION: ClassVar[int] = 1

    def to_data(self) -> dict[str, Any]:
        return {
            field.name: str(value) if isinstance(value, uuid.UUID) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Self:
        """Build the event from `data` that its schema has admitted (so every field is there, typed)."""
        fields = _FIELDS.get(cls) or _FIELDS.setdefault(cls, _fields(cls))
        return cls(**{name: uuid.UUID(data[name]) if is_uuid else data[name] for name, is_uuid in fields})


# Each event class's fields, and which of them are UUIDs: read from its annotations once, not for every
# event decoded (typing.get_type_hints evaluates them anew each time).
_FIELDS: dict[type[Event], tuple[tuple[str, bool], ...]] = {}


def _fields(event_class: type[Event]) -> tuple[tuple[str, bool], ...]:
    hints = typing.get_type_hints(event_class)
    return tuple((field.name, hints[field.name] is uuid.UUID) for field in dataclasses.fields(event_class))


@dataclasses.dataclass(frozen=True)
class UserRegistered(Event):
    TYPE = "users.user.registered"
    user_id: uuid.UUID
    name: str
    credit_limit_cents: int


@dataclasses.dataclass(frozen=True)
class CreditLimitChanged(Event):
    TYPE = "users.credit.limit_changed"
    user_id: uuid.UUID
    credit_limit_cents: int
    previous_credit_limit_cents: int


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
    DATAVERSION = 2  # version 2 adds the reason deadline_exceeded
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
        CreditLimitChanged,
        OrderCreated,
        CreditReserved,
        CreditRejected,
        OrderApproved,
        OrderRejected,
        OrderCancelled,
        CreditReleased,
    )
}

Decoder = Callable[[dict[str, Any]], Event]


def _credit_rejected_v2(data: dict[str, Any]) -> CreditRejected:
    # Version 2 makes the reason {code, message}. orders_service acts on the code alone, which is
    # version 1's reason: so both versions decode into the same dataclass, and the handler is the same.
    return CreditRejected(uuid.UUID(data["order_id"]), uuid.UUID(data["user_id"]), data["reason"]["code"])


# Every (type, data version) that consumers accept, and how it becomes the dataclass that handlers
# take. A dataclass decodes its own version (DATAVERSION, the one producers emit); another version
# of the same type is translated here, for as long as both are on the wire (docs/events.md).
DECODERS: dict[tuple[str, int], Decoder] = {
    **{(event.TYPE, event.DATAVERSION): event.from_data for event in EVENT_TYPES.values()},
    (CreditRejected.TYPE, 2): _credit_rejected_v2,
    # Version 1's reasons are some of version 2's: the same fields, read the same way.
    (OrderRejected.TYPE, 1): OrderRejected.from_data,
}
# Paired at import: a decoder without a schema would accept data that nothing has checked.
ACCEPTED = {version: (schemas.EVENT_DATA[version], decode) for version, decode in DECODERS.items()}
