"""The fast check (jsonschema-rs) never accepts what the explaining one (jsonschema) refuses, so that
a schema's answer is always jsonschema's, however hostile the document (shared/schemas.py)."""

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import schemas
from tests.unit.event_samples import sample_data, sample_envelope

# Every schema by name: the envelope's and each event's data.
SCHEMAS: dict[str, schemas.Schema] = {
    "envelope": schemas.ENVELOPE,
    **{f"{kind} v{version}": schema for (kind, version), schema in schemas.EVENT_DATA.items()},
}
# Each compiled both ways: tolerant and strict.
ALL: dict[str, schemas.Validators] = {
    f"{name} {mode}": getattr(schema, mode)
    for name, schema in SCHEMAS.items()
    for mode in ("tolerant", "strict")
}

# Values that tell validators apart: near misses of each rule, and what Python and JSON disagree on.
EDGES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**63 - 2, max_value=2**70),
    st.floats(allow_nan=False),
    st.just(1.0),
    st.text(max_size=40),
    st.sampled_from(["", "\n", "x\n", "users_service\n", "orders.order.created\n", "1.0", "2.0"]),
    st.uuids().map(str),
    st.uuids().map(lambda value: str(value).upper()),
    st.uuids().map(lambda value: value.hex),
    st.uuids().map(lambda value: f"{{{value}}}"),
    st.uuids().map(lambda value: f"urn:uuid:{value}"),
    st.uuids().map(lambda value: f"{value}\n"),
    st.sampled_from(["2026-12-05T10:00:00Z", "2026-12-05T10:00:00", "2026-13-45T99:00:00Z", "yesterday"]),
    st.sampled_from(["00-" + "a" * 32 + "-" + "b" * 16 + "-01", "00-" + "a" * 32 + "-" + "b" * 16 + "-01\n"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def samples() -> dict[str, dict[str, Any]]:
    """A valid document for each schema: an event's envelope, and each event's data."""
    found = {name: sample_data(schema.document) for name, schema in SCHEMAS.items() if name != "envelope"}
    (kind, version), *_ = schemas.EVENT_DATA
    found["envelope"] = orjson.loads(sample_envelope(kind, version).to_json())
    return found


SAMPLES = samples()


def mutated(document: dict[str, Any], changes: list[tuple[int, Any]], removals: list[int]) -> dict[str, Any]:
    """The document with some fields set to other values, some removed, nested ones included."""
    result = dict(document)
    keys = sorted(result)
    for index, value in changes:
        result[keys[index % len(keys)]] = value
    for index in removals:
        result.pop(keys[index % len(keys)], None)
    return result


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(ALL)),
    changes=st.lists(st.tuples(st.integers(0, 30), EDGES), max_size=3),
    removals=st.lists(st.integers(0, 30), max_size=1),
    extra=st.dictionaries(st.sampled_from(["note", "x", "data"]), EDGES, max_size=1),
)
def test_the_fast_check_never_accepts_what_jsonschema_refuses(
    name: str, changes: list[tuple[int, Any]], removals: list[int], extra: dict[str, Any]
) -> None:
    validators = ALL[name]
    document = mutated({**SAMPLES[name.rsplit(" ", 1)[0]], **extra}, changes, removals)
    explaining_says_valid = validators.explaining.is_valid(document)
    if validators.fast.is_valid(document):
        assert explaining_says_valid, (name, document)
    # Whatever the fast check says, the answer is jsonschema's.
    assert (validators.problem(document, root="") is None) == explaining_says_valid


def test_a_valid_event_is_valid_to_both() -> None:
    for name, validators in ALL.items():
        document = SAMPLES[name.rsplit(" ", 1)[0]]
        assert validators.fast.is_valid(document), name
        assert validators.explaining.is_valid(document), name
