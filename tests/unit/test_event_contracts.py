"""The events' contracts: the JSON Schemas in shared/contracts/ and the dataclasses in shared/events.py
say the same thing, every event is checked against them on its way out (a broken one raises) and on
its way in (a broken one is dead-lettered at once, and the consumer goes on)."""

import dataclasses
import types
import typing
import uuid
from typing import Any, cast

import aio_pika
import asyncpg
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from prometheus_client import CollectorRegistry

from shared import schemas
from shared.bus_contract import bus
from shared.consumer import Consumer
from shared.db import Connection
from shared.envelope import ContractViolation, Envelope, InvalidEvent, check_outgoing
from shared.events import DECODERS, EVENT_TYPES, CreditRejected, CreditReserved, Event, OrderCancelled
from shared.metrics import MessagingMetrics
from shared.topology import ConsumerQueues
from shared.unit_of_work import Outbox, UnitOfWork
from tests.unit.event_samples import CAUSE, sample_envelope, sample_event

# ---- the dataclasses and the schemas agree ---------------------------------------------------------

_JSON_KINDS: dict[object, str] = {uuid.UUID: "string/uuid", str: "string", int: "integer", bool: "boolean"}


def _kinds_of_annotation(annotation: object) -> set[str]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*map(_kinds_of_annotation, typing.get_args(annotation)))
    if annotation is type(None):
        return {"null"}
    return {_JSON_KINDS.get(annotation, f"unsupported {annotation!r}")}


def _kinds_of_schema(schema: dict[str, Any]) -> set[str]:
    declared = schema.get("type")
    kinds = {declared} if isinstance(declared, str) else set(declared or ())
    if schema.get("format") == "uuid":
        kinds = {"string/uuid" if kind == "string" else kind for kind in kinds}
    return kinds


def disagreements(event_class: type[Event], schema: dict[str, Any]) -> list[str]:
    """Where a dataclass and the schema of the data version it is emitted as say different things:
    a field one has and the other lacks, a field required in one and optional in the other, or a
    field whose types differ."""
    hints = typing.get_type_hints(event_class)
    fields = {field.name: field for field in dataclasses.fields(event_class)}
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    found = [f"{name}: in the dataclass, not in the schema" for name in sorted(fields.keys() - properties)]
    found += [f"{name}: in the schema, not in the dataclass" for name in sorted(properties.keys() - fields)]
    for name in sorted(fields.keys() & properties.keys()):
        field = fields[name]
        optional = (
            field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        )
        if optional == (name in required):
            found.append(
                f"{name}: {'optional' if optional else 'required'} in the dataclass, not in the schema"
            )
        in_code, in_schema = _kinds_of_annotation(hints[name]), _kinds_of_schema(properties[name])
        if in_code != in_schema:
            found.append(f"{name}: {sorted(in_code)} in the dataclass, {sorted(in_schema)} in the schema")
    return found


def own_schema(event_class: type[Event]) -> dict[str, Any]:
    return schemas.EVENT_DATA[(event_class.TYPE, event_class.DATAVERSION)].document


def test_every_event_type_has_a_schema_and_every_schema_an_event_type() -> None:
    emitted = {(event.TYPE, event.DATAVERSION) for event in EVENT_TYPES.values()}
    assert emitted <= set(schemas.EVENT_DATA), "an event type whose emitted version has no schema"
    assert {event_type for event_type, _ in schemas.EVENT_DATA} == set(EVENT_TYPES)
    # A schema that no consumer decodes would describe an event that is dead-lettered on arrival.
    assert set(DECODERS) == set(schemas.EVENT_DATA)


@pytest.mark.parametrize("version", sorted(schemas.EVENT_DATA), ids=lambda v: f"{v[0]}.v{v[1]}")
def test_every_event_schema_is_open_to_fields_added_later(version: tuple[str, int]) -> None:
    document = schemas.EVENT_DATA[version].document
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    objects = [document, *(p for p in document["properties"].values() if p.get("type") == "object")]
    # The versioning rule lets a producer add an optional field before its consumers know it.
    assert all(node.get("additionalProperties") is True for node in objects)


@pytest.mark.parametrize("event_class", EVENT_TYPES.values(), ids=lambda c: c.TYPE)
def test_every_dataclass_agrees_with_its_schema(event_class: type[Event]) -> None:
    assert disagreements(event_class, own_schema(event_class)) == []


@dataclasses.dataclass(frozen=True)
class _RenamedField(Event):
    TYPE = "users.credit.reserved"
    order_id: uuid.UUID
    user_id: uuid.UUID
    amount: int


@dataclasses.dataclass(frozen=True)
class _AmountAsText(Event):
    TYPE = "users.credit.reserved"
    order_id: uuid.UUID
    user_id: uuid.UUID
    amount_cents: str


@dataclasses.dataclass(frozen=True)
class _OptionalNote(Event):
    TYPE = "users.credit.reserved"
    order_id: uuid.UUID
    user_id: uuid.UUID
    amount_cents: int
    note: str | None = None


@dataclasses.dataclass(frozen=True)
class _UnknownVersion(Event):
    TYPE = "users.credit.reserved"
    DATAVERSION = 9
    order_id: uuid.UUID
    user_id: uuid.UUID
    amount_cents: int


def _without_required(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return {**schema, "required": [field for field in schema["required"] if field != name]}


def _with_property_type(schema: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    return {**schema, "properties": {**schema["properties"], name: {"type": kind}}}


RESERVED = own_schema(CreditReserved)


@pytest.mark.parametrize(
    ("event_class", "schema", "expected"),
    [
        (
            _RenamedField,
            RESERVED,
            [
                "amount: in the dataclass, not in the schema",
                "amount_cents: in the schema, not in the dataclass",
            ],
        ),
        (_AmountAsText, RESERVED, ["amount_cents: ['string'] in the dataclass, ['integer'] in the schema"]),
        (_OptionalNote, RESERVED, ["note: in the dataclass, not in the schema"]),
        (
            CreditReserved,
            _with_property_type(RESERVED, "order_id", "integer"),
            ["order_id: ['string/uuid'] in the dataclass, ['integer'] in the schema"],
        ),
        (
            CreditReserved,
            _without_required(RESERVED, "amount_cents"),
            ["amount_cents: required in the dataclass, not in the schema"],
        ),
        (
            _OptionalNote,
            _with_property_type(RESERVED, "note", "string"),
            ["note: ['null', 'string'] in the dataclass, ['string'] in the schema"],
        ),
    ],
    ids=[
        "renamed field",
        "wrong type",
        "undeclared field",
        "uuid vs integer",
        "required vs optional",
        "nullable",
    ],
)
def test_the_agreement_check_catches_a_dataclass_that_drifted_from_its_schema(
    event_class: type[Event], schema: dict[str, Any], expected: list[str]
) -> None:
    assert disagreements(event_class, schema) == expected


# ---- every event goes out and comes back through its contract --------------------------------------


@pytest.mark.parametrize("event_class", EVENT_TYPES.values(), ids=lambda c: c.TYPE)
def test_every_event_passes_its_contract_out_and_in(event_class: type[Event]) -> None:
    event = sample_event(event_class)
    body = Envelope.wrap(event, source="contract-test", cause=CAUSE).to_json()
    check_outgoing(body)
    assert Envelope.from_json(body).event() == event


# ---- on the way out: a producer that breaks its contract fails loudly, and stores nothing ----------


class RecordingConnection:
    """Stands for the transaction's connection: what would have been written to the outbox."""

    def __init__(self) -> None:
        self.executed: list[tuple[str, tuple[object, ...]]] = []

    async def execute(self, query: str, *arguments: object) -> str:
        self.executed.append((query, arguments))
        return "INSERT 0 1"


def _ids() -> tuple[uuid.UUID, uuid.UUID]:
    return uuid.uuid4(), uuid.uuid4()


@pytest.mark.parametrize(
    ("event", "problem"),
    [
        (CreditReserved(*_ids(), -100), "users.credit.reserved v1: data.amount_cents must be at least 0"),
        (_AmountAsText(*_ids(), "100"), "users.credit.reserved v1: data.amount_cents must be an integer"),
        (_RenamedField(*_ids(), 100), "users.credit.reserved v1: data.amount_cents is missing"),
        (_OptionalNote(*_ids(), 100, "hi"), "users.credit.reserved v1: data.note is not in the contract"),
        (CreditRejected(*_ids(), "bored"), "users.credit.rejected v1: data.reason must be one of"),
        (
            OrderCancelled(*_ids(), "REJECTED"),
            "orders.order.cancelled v1: data.previous_status must be one of",
        ),
        (_UnknownVersion(*_ids(), 100), "users.credit.reserved v9 has no schema"),
    ],
    ids=[
        "below minimum",
        "wrong type",
        "missing field",
        "undeclared field",
        "not in enum",
        "wrong status",
        "version without schema",
    ],
)
async def test_writing_an_event_that_breaks_its_contract_raises_and_writes_nothing(
    event: Event, problem: str
) -> None:
    connection = RecordingConnection()
    work = UnitOfWork(
        cast(Connection, connection), Outbox(source=bus().publisher.get(event.TYPE, "?")), CAUSE
    )
    with pytest.raises(ContractViolation) as raised:
        await work.emit(event)
    assert str(raised.value).startswith(problem)
    assert work.emitted == []
    assert connection.executed == []


async def test_a_service_cannot_emit_an_event_type_that_another_publishes() -> None:
    connection = RecordingConnection()
    work = UnitOfWork(cast(Connection, connection), Outbox(source="orders_service"), CAUSE)
    with pytest.raises(ContractViolation, match="orders_service emits users.credit.reserved"):
        await work.emit(sample_event(CreditReserved))
    assert work.emitted == []
    assert connection.executed == []


async def test_writing_a_valid_event_stores_exactly_the_checked_body() -> None:
    connection = RecordingConnection()
    envelope = Outbox(source="users_service").envelope(sample_event(CreditReserved), CAUSE)
    await Outbox.write(cast(Connection, connection), [envelope])
    [(_, (event_ids, event_types, bodies, correlation_ids, traceparents, subjects))] = connection.executed
    assert (event_ids, event_types) == ([envelope.id], ["users.credit.reserved"])
    assert isinstance(bodies, list)
    assert Envelope.from_json(bodies[0].encode()) == envelope
    # What the relay publishes the row with, beside the body it never parses again.
    assert (correlation_ids, traceparents) == ([CAUSE.correlation_id], [None])
    assert subjects == [envelope.subject] == [f"order:{envelope.data['order_id']}"]


# ---- on the way in: a message that breaks its contract is an InvalidEvent -------------------------


def _document(envelope: Envelope) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(envelope.to_json())
    return document


def _broken(event_type: str, version: int = 1, **changes: Any) -> bytes:
    """A valid envelope of that event with `changes` made: a key `data_x` sets data.x, `x` sets x,
    and a value of ... removes the key."""
    document = _document(sample_envelope(event_type, version))
    for key, value in changes.items():
        target, name = (
            (document["data"], key.removeprefix("data_")) if key.startswith("data_") else (document, key)
        )
        if value is ...:
            del target[name]
        else:
            target[name] = value
    return orjson.dumps(document)


V2_REASON = {
    "code": "insufficient_credit",
    "message": "The order's total exceeds the credit left by 1200 cents.",
}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            _broken("users.credit.rejected", data_reason=...),
            "users.credit.rejected v1: data.reason is missing",
        ),
        (
            _broken("users.credit.reserved", data_amount_cents="100"),
            "users.credit.reserved v1: data.amount_cents must be an integer",
        ),
        (
            _broken("users.credit.reserved", data_amount_cents=True),
            "users.credit.reserved v1: data.amount_cents must be an integer",
        ),
        (
            _broken("orders.order.created", data_total_cents=-1),
            "orders.order.created v1: data.total_cents must be at least 0",
        ),
        (
            _broken("orders.order.cancelled", data_order_id="42"),
            "orders.order.cancelled v1: data.order_id must be a uuid",
        ),
        (
            _broken("users.credit.rejected", data_reason="bored"),
            "users.credit.rejected v1: data.reason must be one of"
            " insufficient_credit, unknown_user, order_cancelled",
        ),
        # Why version 2 is a new version: a version 1 consumer could not read its reason.
        (
            _broken("users.credit.rejected", data_reason=V2_REASON),
            "users.credit.rejected v1: data.reason must be a string",
        ),
        (
            _broken("users.credit.rejected", 2, data_reason="insufficient_credit"),
            "users.credit.rejected v2: data.reason must be an object",
        ),
        (
            _broken("users.credit.rejected", 2, data_reason={"code": "insufficient_credit"}),
            "users.credit.rejected v2: data.reason.message is missing",
        ),
        (_broken("users.credit.rejected", dataversion=3), "users.credit.rejected has no data version 3"),
        (
            _broken("users.credit.rejected", type="orders.order.shipped"),
            "unknown event type 'orders.order.shipped'",
        ),
        (_broken("users.credit.rejected", id=...), "not an event envelope: id is missing"),
        (_broken("users.credit.rejected", id="7"), "not an event envelope: id must be a uuid"),
        (
            _broken("users.credit.rejected", specversion="0.3"),
            "not an event envelope: specversion must be '1.0'",
        ),
        (
            _broken("users.credit.rejected", dataversion="1"),
            "not an event envelope: dataversion must be an integer",
        ),
        (_broken("users.credit.rejected", data=[]), "not an event envelope: data must be an object"),
        (
            _broken("users.credit.rejected", time="yesterday"),
            "not an event envelope: time must be a date-time",
        ),
        (
            _broken("users.credit.rejected", time="2026-11-28T16:07:27"),
            "not an event envelope: time must be a date-time",
        ),
        (b"[1, 2, 3]", "not an event envelope: the document must be an object"),
        (b"this is not an event", "the body is not JSON"),
    ],
    ids=[
        "missing field",
        "text for integer",
        "boolean for integer",
        "below minimum",
        "not a uuid",
        "not in enum",
        "v2 shape as v1",
        "v1 shape as v2",
        "v2 incomplete",
        "unknown version",
        "unknown type",
        "no id",
        "bad id",
        "other specversion",
        "text dataversion",
        "data not an object",
        "bad time",
        "time without offset",
        "not an object",
        "not JSON",
    ],
)
def test_a_received_message_that_breaks_its_contract_is_invalid(body: bytes, problem: str) -> None:
    with pytest.raises(InvalidEvent) as raised:
        Envelope.from_json(body).event()
    assert str(raised.value) == problem


def test_a_received_event_with_fields_its_consumer_does_not_know_is_accepted() -> None:
    document = _document(sample_envelope("users.credit.reserved", 1))
    known = dict(document["data"])
    document["data"]["currency"] = "EUR"  # added by a newer producer, as the versioning rule allows
    document["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    event = Envelope.from_json(orjson.dumps(document)).event()
    assert isinstance(event, CreditReserved)
    assert event.to_data() == known


# ---- the consumer dead-letters an invalid message at once, and acks it ----------------------------


class FakeExchange:
    def __init__(self) -> None:
        self.published: list[tuple[aio_pika.Message, str]] = []

    async def publish(self, message: aio_pika.Message, routing_key: str, *, mandatory: bool) -> None:
        assert mandatory
        self.published.append((message, routing_key))


class FakeChannel:
    def __init__(self) -> None:
        self.default_exchange = FakeExchange()


class FakeMessage:
    def __init__(self, body: bytes) -> None:
        self.body = body
        self.headers: dict[str, Any] = {}
        self.routing_key = "users.credit.rejected"
        self.content_type = "application/cloudevents+json; charset=utf-8"
        self.message_id = None
        self.type = "users.credit.rejected"
        self.correlation_id = None
        self.user_id = "users_service"
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


async def test_the_consumer_dead_letters_a_message_that_breaks_its_contract_at_once() -> None:
    channel = FakeChannel()
    consumer = Consumer(
        queues=ConsumerQueues("orders_service", ("users.credit.rejected",)),
        handlers={},  # never reached: an invalid message gets no further than its contract
        pool=cast(asyncpg.Pool, None),  # nor does it touch the database
        outbox=Outbox(source="orders_service"),
        channel=cast(AbstractChannel, channel),
        retry_delays_ms=(1000,),
        publish_timeout=1.0,
        unavailable_wait=1.0,
        batch_size=16,
        own_user="orders_service",
        publishers={"users.credit.rejected": "users_service"},
        metrics=MessagingMetrics(CollectorRegistry()),
    )
    message = FakeMessage(_broken("users.credit.rejected", data_reason=5))
    await consumer._process(cast(AbstractIncomingMessage, message))
    [(dead_letter, queue)] = channel.default_exchange.published
    assert queue == "orders_service.dlq"
    assert dead_letter.body == message.body
    assert dead_letter.headers["x-dead-letter-reason"] == "invalid"
    assert dead_letter.headers["x-error"] == "users.credit.rejected v1: data.reason must be a string"
    assert message.acked  # gone from the queue: the consumer goes on with the next message
