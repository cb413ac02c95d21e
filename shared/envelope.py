"""The CloudEvents 1.0 envelope that carries every event, and the checks an envelope must pass.

On the wire an event is a CloudEvents document in structured JSON mode; its `type` is also the AMQP
routing key (shared/messages.py makes the AMQP message). Every event is checked against its schema
twice: when it is written to the outbox (`check_outgoing`: breaking the contract there is a bug, and
fails loudly), and when it is received (`Envelope.event`: an invalid message is an `InvalidEvent`,
which the consumer dead-letters at once).
"""

import dataclasses
import datetime
import uuid
from typing import Any

import orjson

from shared import schemas
from shared.events import ACCEPTED, EVENT_TYPES, Event

SPEC_VERSION = "1.0"


class InvalidEvent(ValueError):
    """The message is not an event we accept: it can never succeed, so it is dead-lettered."""


class ContractViolation(Exception):
    """An event about to be emitted breaks its own contract: a bug in the producer, not a message to
    dead-letter. It is raised where the event is written, so the transaction that would have stored
    the event rolls back and no consumer ever receives it."""


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
    # The W3C trace context the event was written in (the CloudEvents distributed-tracing
    # extension): the relay publishes later, so the context travels with the row. None when off.
    traceparent: str | None = None

    @classmethod
    def wrap(cls, event: Event, *, source: str, cause: Cause, traceparent: str | None = None) -> "Envelope":
        return cls(
            id=uuid.uuid4(),
            source=source,
            type=event.TYPE,
            time=datetime.datetime.now(datetime.UTC),
            data=event.to_data(),
            dataversion=event.DATAVERSION,
            correlationid=cause.correlation_id,
            causationid=cause.causation_id,
            traceparent=traceparent,
        )

    def to_json(self) -> bytes:
        tracing = {"traceparent": self.traceparent} if self.traceparent else {}
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
                **tracing,
                "data": self.data,
            },
            option=orjson.OPT_UTC_Z,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> "Envelope":
        """The envelope of a received message; one that breaks the envelope's schema is an InvalidEvent."""
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidEvent("the body is not JSON") from None
        problem = schemas.ENVELOPE.problem(document, strict=False)
        if problem is not None:
            raise InvalidEvent(f"not an event envelope: {problem}")
        # Checked here too: jsonschema checks "date-time" only where rfc3339-validator is installed.
        try:
            time = datetime.datetime.fromisoformat(document["time"])
        except ValueError:
            time = None
        if time is None or time.tzinfo is None:
            raise InvalidEvent("not an event envelope: time must be a date-time")
        return cls(
            id=uuid.UUID(document["id"]),
            source=document["source"],
            type=document["type"],
            time=time,
            data=document["data"],
            dataversion=int(document["dataversion"]),  # 2.0 is an integer to JSON Schema too
            correlationid=document["correlationid"],
            causationid=document["causationid"],
            traceparent=document.get("traceparent"),
        )

    def event(self) -> Event:
        """The typed event inside. An unknown type or data version, or data that breaks its schema, is
        an InvalidEvent."""
        accepted = ACCEPTED.get((self.type, self.dataversion))
        if accepted is None:
            if self.type not in EVENT_TYPES:
                raise InvalidEvent(f"unknown event type {self.type!r}")
            raise InvalidEvent(f"{self.type} has no data version {self.dataversion}")
        schema, decode = accepted
        problem = schema.problem(self.data, strict=False, root="data")
        if problem is not None:
            raise InvalidEvent(f"{self.type} v{self.dataversion}: {problem}")
        return decode(self.data)

    @property
    def subject(self) -> str | None:
        """What the event is about, as "order:<id>" or "user:<id>" (an order before its customer)."""
        for key, label in (("order_id", "order"), ("user_id", "user")):
            if isinstance(self.data.get(key), str):
                return f"{label}:{self.data[key]}"
        return None

    def log_fields(self) -> dict[str, str]:
        """What a log line about this event shows: its type, a short subject id, its story's id."""
        return log_fields(self.type, self.correlationid, self.subject)

    def as_cause(self) -> Cause:
        """The cause of whatever this event leads to: same story, caused by this event."""
        return Cause(correlation_id=self.correlationid, causation_id=str(self.id))


def log_fields(event_type: str, correlation_id: str, subject: str | None) -> dict[str, str]:
    """The fields that name an event in a log line, from what an outbox row keeps of it as well as
    from its envelope: "order=5c1e1a2b" shows the subject short."""
    fields = {"type": event_type, "correlation_id": correlation_id}
    if subject is not None:
        label, _, subject_id = subject.partition(":")
        fields[label] = subject_id[:8]
    return fields


def check_outgoing(body: bytes) -> None:
    """Raise ContractViolation unless `body` is an event its consumers accept, with no field that its
    schema does not declare (strict: what a producer emits, it must have declared)."""
    document = orjson.loads(body)
    problem = schemas.ENVELOPE.problem(document, strict=False)
    if problem is not None:
        raise ContractViolation(f"not an event envelope: {problem}")
    version = (document["type"], document["dataversion"])
    schema = schemas.EVENT_DATA.get(version)
    if schema is None:
        raise ContractViolation(f"{version[0]} v{version[1]} has no schema ({version[0]}.v{version[1]}.json)")
    problem = schema.problem(document["data"], strict=True, root="data")
    if problem is not None:
        raise ContractViolation(f"{version[0]} v{version[1]}: {problem}")
