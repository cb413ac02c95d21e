"""Valid events of every type and data version, made from their schemas (so they follow the contract
by construction, and a test that uses them needs no change when an event gains a field)."""

import dataclasses
import uuid
from typing import Any

from shared import schemas
from shared.envelope import Cause, Envelope
from shared.events import EVENT_TYPES, Event

CAUSE = Cause(correlation_id="contract-test", causation_id="contract-test")


def sample_data(schema: dict[str, Any]) -> dict[str, Any]:
    """The smallest valid instance of an object schema: every property, each at its first valid value."""
    return {name: _sample_value(property_schema) for name, property_schema in schema["properties"].items()}


def _sample_value(schema: dict[str, Any]) -> Any:
    if "enum" in schema:
        return schema["enum"][0]
    if schema.get("format") == "uuid":
        return str(uuid.uuid4())
    kind = schema["type"]
    if kind == "object":
        return sample_data(schema)
    if kind == "integer":
        return schema.get("minimum", 0) + 100
    if kind == "string":
        return "x" * max(schema.get("minLength", 0), 1)
    raise AssertionError(f"no sample for {schema}")


def sample_event(event_class: type[Event]) -> Event:
    return event_class.from_data(
        sample_data(schemas.EVENT_DATA[(event_class.TYPE, event_class.DATAVERSION)].document)
    )


def sample_envelope(event_type: str, dataversion: int) -> Envelope:
    """An envelope of any accepted data version, as a producer of that version would write it."""
    envelope = Envelope.wrap(sample_event(EVENT_TYPES[event_type]), source="contract-test", cause=CAUSE)
    data = sample_data(schemas.EVENT_DATA[(event_type, dataversion)].document)
    return dataclasses.replace(envelope, data=data, dataversion=dataversion)
