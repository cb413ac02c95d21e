"""The events' contracts: JSON Schemas (draft 2020-12) kept in shared/contracts/, compiled once, at import.

    shared/contracts/cloudevent.json            the CloudEvents envelope that every event travels in
    shared/contracts/events/<type>.v<N>.json    the `data` of event <type>, data version N

These files are the one definition of what goes on the wire: docs/asyncapi.yaml refers to them, and
shared/events.py checks every event against them on its way out and on its way in. A schema is used
two ways:

- tolerant, for what a service receives: a field the schema does not declare is ignored, so that a
  producer may add an optional field before its consumers know of it (docs/events.md);
- strict, for what a service emits: a field the schema does not declare is a bug (a typo, or a field
  added to a dataclass but not to its contract), since no consumer has agreed to it.

Every event is checked twice on its way (out by its producer, in by each consumer), so the check is
on the saga's hot path: the pure-Python validator (jsonschema) takes some 60 µs for an envelope,
jsonschema-rs (compiled) one. So jsonschema-rs answers first, and only a document it finds invalid
is looked at by jsonschema, whose errors name the field and the rule broken. jsonschema-rs is the
stricter of the two where they differ (it checks formats that jsonschema skips without their extra
packages, and `$` matches only at the very end), so the answer is always jsonschema's:
tests/unit/test_schemas.py holds them to that.
"""

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, Self

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

CONTRACTS = Path(__file__).parent / "contracts"
ENVELOPE_FILE = CONTRACTS / "cloudevent.json"
EVENTS_DIR = CONTRACTS / "events"

_EVENT_FILE = re.compile(r"^(?P<type>[a-z_]+(?:\.[a-z_]+)+)\.v(?P<version>[1-9][0-9]*)\.json$")
_JSON_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}
MAX_PROBLEM_TEXT = 200


@dataclasses.dataclass(frozen=True)
class Validators:
    """One schema, compiled twice: the fast check, and the one that explains."""

    fast: jsonschema_rs.Validator
    explaining: Draft202012Validator

    @classmethod
    def compile(cls, document: dict[str, Any]) -> Self:
        # Without format checks, "format": "uuid" would only be an annotation.
        return cls(
            jsonschema_rs.validator_for(document, validate_formats=True),
            Draft202012Validator(document, format_checker=Draft202012Validator.FORMAT_CHECKER),
        )

    def problem(self, instance: object, root: str) -> str | None:
        if self.fast.is_valid(instance):
            return None
        error = best_match(self.explaining.iter_errors(instance))
        return None if error is None else explain(error, root)


@dataclasses.dataclass(frozen=True)
class Schema:
    document: dict[str, Any]
    tolerant: Validators
    strict: Validators

    @classmethod
    def load(cls, path: Path) -> Self:
        document = json.loads(path.read_text())
        Draft202012Validator.check_schema(document)  # a broken schema file fails the import, not a message
        return cls(document, Validators.compile(document), Validators.compile(_closed(document)))

    def problem(self, instance: object, *, strict: bool, root: str = "") -> str | None:
        """What is wrong with `instance` (the most relevant error, one line), or None if nothing is."""
        return (self.strict if strict else self.tolerant).problem(instance, root)


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """The same schema with each object closed to the properties it declares (nested through
    `properties`, the only nesting the event schemas use)."""
    closed = dict(schema)
    if "properties" in schema:
        closed["properties"] = {name: _closed(sub) for name, sub in schema["properties"].items()}
        if schema.get("additionalProperties", True) is True:
            closed["additionalProperties"] = False
    return closed


def explain(error: ValidationError, root: str = "") -> str:
    """One short line naming the field and the rule it breaks: `data.reason must be a string`."""
    path = ".".join(part for part in [root, *map(str, error.absolute_path)] if part)

    def at(name: object) -> str:
        return f"{path}.{name}" if path else str(name)

    value: Any = error.validator_value
    match error.validator:
        case "required" if isinstance(error.instance, dict):
            text = f"{at(next(name for name in value if name not in error.instance))} is missing"
        case "additionalProperties" if isinstance(error.instance, dict):
            declared = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
            text = f"{at(min(set(error.instance) - set(declared)))} is not in the contract"
        case "type":
            expected = " or ".join(
                _JSON_TYPE_NAMES.get(t, t) for t in ([value] if isinstance(value, str) else value)
            )
            text = f"{path or 'the document'} must be {expected}"
        case "format":
            text = f"{path} must be a {value}"
        case "enum":
            text = f"{path} must be one of {', '.join(map(str, value))}"
        case "const":
            text = f"{path} must be {value!r}"
        case "minimum":
            text = f"{path} must be at least {value}"
        case "minLength" if value == 1:
            text = f"{path} must not be empty"
        case _:
            text = f"{path or 'the document'}: {error.message}"
    return text[:MAX_PROBLEM_TEXT]


def load_event_schemas(directory: Path) -> dict[tuple[str, int], Schema]:
    """Every event schema in `directory`, by (type, data version) as its file name says."""
    schemas = {}
    for path in sorted(directory.glob("*.json")):
        match = _EVENT_FILE.match(path.name)
        if match is None:
            raise ValueError(f"event schema {path.name!r} is not named <type>.v<N>.json")
        schemas[(match["type"], int(match["version"]))] = Schema.load(path)
    return schemas


ENVELOPE = Schema.load(ENVELOPE_FILE)
EVENT_DATA = load_event_schemas(EVENTS_DIR)
