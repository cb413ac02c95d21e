"""Breaking changes between the contracts as last released and as they are now.

    python -m devstack.contract_changes            list the breaking changes; exit 1 if there are any
    python -m devstack.contract_changes --release  cut a release: snapshot the current contracts

The contracts are the public OpenAPI document (what the gateway publishes), the AsyncAPI document of
the bus, and one JSON Schema per event type and data version. shared/contracts/released/ holds them as
last released. A change that breaks a client or consumer written against that release comes as a new
version beside the old one: a new `/api/v2/...` path, a new `<type>.v<N+1>.json`. What is left here
is what a new version does not excuse: the released operations, messages and event schemas must
still be there and keep their promises.

A request is what the client sends, so the server must still accept all it accepted; a response is
what the client reads, so the server must send nothing the client did not expect, and keep sending
what it relied on. Each keyword rule below is therefore written once, as "the schema that must admit
more (the wider) refuses something the other admits", and the two directions only swap the sides.
"""

import argparse
import json
import operator
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml

from gateway.contract import public_contract

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = Path("shared", "contracts")
RELEASED = CONTRACTS / "released"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
# How deep a schema comparison goes: far beyond any real contract, but a bound all the same.
MAX_DEPTH = 32
COMPOSITIONS = ("allOf", "oneOf", "anyOf")
# A limit is tighter when the wider schema's bound is above (a minimum) or below (a maximum) the other's.
LIMITS: dict[str, Callable[[Any, Any], bool]] = {
    **dict.fromkeys(("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties"), operator.gt),
    **dict.fromkeys(("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties"), operator.lt),
}
# Keywords whose value must stay the same where the wider schema has one.
EXACT = ("const", "pattern", "format")
# What an event schema may change in place: annotations, which no validator reads.
ANNOTATIONS = frozenset({"description", "title", "examples", "$comment", "default"})
# Keywords whose value maps names (not keywords) to schemas, or is data: never stripped of "annotations".
NAMED_SCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
DATA = frozenset({"const", "enum"})
EVENT_FILE = re.compile(r"(?P<type>.+)\.v(?P<version>\d+)\.json")

Flow = Literal["request", "response"]
Schema = Any  # a JSON Schema: an object, or true/false
RefPair = tuple[str | None, str | None]


# References ---------------------------------------------------------------------------------------


def _pointer(document: Any, reference: str) -> Any:
    """The node an internal reference ("#/components/schemas/NewItem") names."""
    node = document
    for token in reference.removeprefix("#/").split("/"):
        try:
            node = node[token.replace("~1", "/").replace("~0", "~")]
        except (KeyError, IndexError, TypeError):
            raise ValueError(f"{reference} names nothing in the document") from None
    return node


def _resolve(document: Any, node: Any) -> Any:
    """The node itself, or what its internal $ref names (following a chain of them)."""
    followed: set[str] = set()
    while isinstance(node, dict) and str(node.get("$ref", "")).startswith("#/"):
        reference = node["$ref"]
        if reference in followed:
            raise ValueError(f"a $ref cycle through {reference}")
        followed.add(reference)
        node = _pointer(document, reference)
    return node


def _ref(node: Any) -> str | None:
    return node.get("$ref") if isinstance(node, dict) else None


def _show(schema: dict[str, Any], key: str) -> str:
    return json.dumps(schema[key]) if key in schema else "none"


def _join(path: tuple[str, ...], what: str) -> str:
    return f"{'/'.join(path)}: {what}" if path else what


# Schemas ------------------------------------------------------------------------------------------


def _types(schema: dict[str, Any]) -> set[str] | None:
    """The JSON types a schema admits; None for any."""
    declared = schema.get("type")
    if declared is None:
        return None
    types = {declared} if isinstance(declared, str) else set(declared)
    if schema.get("nullable") is True:  # OpenAPI 3.0's way to say [type, "null"]
        types.add("null")
    if "number" in types:  # every integer is a number
        types.add("integer")
    return types


def _keyword_changes(old: dict[str, Any], new: dict[str, Any], flow: Flow) -> list[str]:
    """What one schema's own keywords (not its subschemas) now refuse or allow that they did not."""
    # Request: the current schema must admit what the released one did. Response: the released one,
    # which clients were written for, must admit what the current one does.
    wide, narrow = (new, old) if flow == "request" else (old, new)
    found: list[str] = []
    wide_types, narrow_types = _types(wide), _types(narrow)
    if wide_types is not None and (narrow_types is None or narrow_types - wide_types):
        word = "narrowed" if flow == "request" else "widened"
        found.append(f"type {word}: {_show(old, 'type')} -> {_show(new, 'type')}")
    if "enum" in wide:
        if "enum" not in narrow:
            found.append(
                f"enum added: {json.dumps(new['enum'])}"
                if flow == "request"
                else "enum removed (any value may come)"
            )
        elif extra := [value for value in narrow["enum"] if value not in wide["enum"]]:
            found.append(f"enum values {'removed' if flow == 'request' else 'added'}: {json.dumps(extra)}")
    for key, tighter in LIMITS.items():
        if key in wide and (key not in narrow or tighter(wide[key], narrow[key])):
            word = "tightened" if flow == "request" else "loosened"
            found.append(f"{key} {word}: {_show(old, key)} -> {_show(new, key)}")
    for key in EXACT:
        if key in wide and (key not in narrow or narrow[key] != wide[key]):
            found.append(f"{key} changed: {_show(old, key)} -> {_show(new, key)}")
    return found


def _property_changes(
    old: dict[str, Any], new: dict[str, Any], flow: Flow, path: tuple[str, ...]
) -> list[str]:
    """Properties removed, or required where they were not (request) or no longer (response)."""
    old_properties, new_properties = old.get("properties", {}), new.get("properties", {})
    old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
    closed = new.get("additionalProperties") is False
    if flow == "response":
        removed_because = "a client that reads it finds nothing"
    elif closed:
        removed_because = "a client that sends it is refused"
    else:
        removed_because = "the server ignores it where a client sends it"
    found = [
        _join((*path, name), f"removed ({removed_because})")
        for name in sorted(old_properties.keys() - new_properties.keys())
    ]
    if flow == "request":
        found += [
            _join((*path, name), "newly required (a client that leaves it out is refused)")
            for name in sorted(new_required - old_required)
        ]
        if closed and old.get("additionalProperties") is not False:
            found.append(_join(path, "additionalProperties turned false (other properties are refused)"))
    else:
        found += [
            _join((*path, name), "no longer required (a client that relies on it may not get it)")
            for name in sorted((old_required - new_required) & new_properties.keys())
        ]
    return found


def _subschemas(old: dict[str, Any], new: dict[str, Any]) -> Iterator[tuple[str, Schema, Schema]]:
    """The pairs of subschemas to compare, each with the step of the path that leads to it."""
    old_properties, new_properties = old.get("properties", {}), new.get("properties", {})
    for name in sorted(old_properties.keys() & new_properties.keys()):
        yield name, old_properties[name], new_properties[name]
    for key in ("items", "additionalProperties"):  # additionalProperties: false is _property_changes'
        if isinstance(old.get(key), dict) and isinstance(new.get(key), dict):
            yield key, old[key], new[key]
    for key in COMPOSITIONS:
        if len(old.get(key, [])) == len(new.get(key, [])):
            for index, (old_part, new_part) in enumerate(
                zip(old.get(key, []), new.get(key, []), strict=True)
            ):
                yield f"{key}/{index}", old_part, new_part


def _composition_changes(old: dict[str, Any], new: dict[str, Any], path: tuple[str, ...]) -> list[str]:
    # Parts are compared by position; when their number changes there is no sound pairing to compare.
    return [
        _join(path, f"{key} changed: {len(old.get(key, []))} schemas -> {len(new.get(key, []))}")
        for key in COMPOSITIONS
        if len(old.get(key, [])) != len(new.get(key, []))
    ]


class _Comparison:
    """The released and the current document, each side's references followed in its own."""

    def __init__(self, released: dict[str, Any], current: dict[str, Any]) -> None:
        self.released, self.current = released, current

    def schema_changes(
        self,
        old: Schema,
        new: Schema,
        flow: Flow,
        path: tuple[str, ...] = (),
        compared: frozenset[RefPair] = frozenset(),
    ) -> list[str]:
        refs = (_ref(old), _ref(new))
        # The same pair of references higher up this branch: a recursive schema, compared there.
        if len(path) > MAX_DEPTH or (refs != (None, None) and refs in compared):
            return []
        old, new = _resolve(self.released, old), _resolve(self.current, new)
        if not isinstance(old, dict) or not isinstance(new, dict):  # a boolean schema
            return (
                [] if old == new else [_join(path, f"schema changed: {json.dumps(old)} -> {json.dumps(new)}")]
            )
        found = [_join(path, change) for change in _keyword_changes(old, new, flow)]
        found += _property_changes(old, new, flow, path)
        found += _composition_changes(old, new, path)
        for step, old_part, new_part in _subschemas(old, new):
            found += self.schema_changes(old_part, new_part, flow, (*path, step), compared | {refs})
        return found

    # Operations -----------------------------------------------------------------------------------

    def operation_changes(self, path: str, method: str) -> list[str]:
        old_item = _resolve(self.released, self.released["paths"][path])
        new_item = _resolve(self.current, self.current.get("paths", {}).get(path, {}))
        if method not in new_item:
            return ["removed (a client that calls it gets 404 or 405)"]
        old_operation, new_operation = old_item[method], new_item[method]
        return [
            *self._security_changes(old_operation, new_operation),
            *self._parameter_changes(old_item, old_operation, new_item, new_operation),
            *self._request_body_changes(old_operation, new_operation),
            *self._response_changes(old_operation, new_operation),
        ]

    def _security_changes(self, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
        def needs_auth(document: dict[str, Any], operation: dict[str, Any]) -> bool:
            # No requirement, or an empty one among them ({}), lets a client in without credentials.
            requirements = operation.get("security", document.get("security", []))
            return bool(requirements) and {} not in requirements

        if needs_auth(self.current, new) and not needs_auth(self.released, old):
            return ["security: now needs authentication (a client without credentials is refused)"]
        return []

    def _parameter_changes(
        self, old_item: dict[str, Any], old: dict[str, Any], new_item: dict[str, Any], new: dict[str, Any]
    ) -> list[str]:
        old_parameters = _parameters(self.released, old_item, old)
        new_parameters = _parameters(self.current, new_item, new)
        found: list[str] = []
        for key, parameter in old_parameters.items():
            where = f"{key[0]} parameter {parameter['name']}"
            if key not in new_parameters:
                found.append(f"{where}: removed (a client that sends it is refused or ignored)")
            else:
                changes = self.schema_changes(
                    parameter.get("schema", {}), new_parameters[key].get("schema", {}), "request"
                )
                found += [f"{where}: {change}" for change in changes]
        for key, parameter in new_parameters.items():
            if parameter.get("required") and not old_parameters.get(key, {}).get("required"):
                found.append(
                    f"{key[0]} parameter {parameter['name']}: newly required (a client without it is refused)"
                )
        return found

    def _request_body_changes(self, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
        old_body = _resolve(self.released, old.get("requestBody", {}))
        new_body = _resolve(self.current, new.get("requestBody", {}))
        found = []
        if new_body.get("required") and not old_body.get("required"):
            found.append("request body: now required (a client that sends none is refused)")
        old_content, new_content = old_body.get("content", {}), new_body.get("content", {})
        for media_type, old_media in old_content.items():
            where = "request body" if len(old_content) == 1 else f"request body {media_type}"
            if media_type not in new_content:
                found.append(f"{where}: {media_type} no longer accepted")
                continue
            changes = self.schema_changes(
                old_media.get("schema", {}), new_content[media_type].get("schema", {}), "request"
            )
            found += [f"{where}: {change}" for change in changes]
        return found

    def _response_changes(self, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
        # YAML reads an unquoted status as a number; JSON always has strings.
        old_responses = {str(status): response for status, response in old.get("responses", {}).items()}
        new_responses = {str(status): response for status, response in new.get("responses", {}).items()}
        found = []
        for status, old_response in old_responses.items():
            if status not in new_responses:
                if status.startswith("2"):  # an error no longer documented is the client's good news
                    found.append(f"response {status}: removed (a client that waits for it never gets it)")
                continue
            old_content = _resolve(self.released, old_response).get("content", {})
            new_content = _resolve(self.current, new_responses[status]).get("content", {})
            for media_type, old_media in old_content.items():
                where = f"response {status} {media_type}"
                if media_type not in new_content:
                    found.append(f"{where}: no longer sent")
                    continue
                changes = self.schema_changes(
                    old_media.get("schema", {}), new_content[media_type].get("schema", {}), "response"
                )
                found += [f"{where}: {change}" for change in changes]
        return found


def _parameters(
    document: dict[str, Any], item: dict[str, Any], operation: dict[str, Any]
) -> dict[tuple[str, str], Any]:
    """An operation's parameters by (location, name): the path's, overridden by the operation's own."""
    parameters = {}
    for raw in [*item.get("parameters", []), *operation.get("parameters", [])]:
        parameter = _resolve(document, raw)
        name = parameter["name"]
        if parameter["in"] == "header":  # HTTP header names are case-insensitive
            name = name.lower()
        parameters[(parameter["in"], name)] = parameter
    return parameters


def openapi_breaking_changes(released: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """One line per breaking change of the current OpenAPI document for a client of the released one."""
    comparison = _Comparison(released, current)
    found = []
    for path, item in released.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in _resolve(released, item):
                found += [
                    f"{method.upper()} {path}: {change}"
                    for change in comparison.operation_changes(path, method)
                ]
    return found


# Events -------------------------------------------------------------------------------------------


def _without_annotations(node: Any, names: bool = False) -> Any:
    """A schema less its annotations. `names`: the node maps names (of properties...) to schemas."""
    if isinstance(node, list):
        return [_without_annotations(item) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {name: _without_annotations(schema) for name, schema in node.items()}
    return {
        key: value if key in DATA else _without_annotations(value, names=key in NAMED_SCHEMAS)
        for key, value in node.items()
        if key not in ANNOTATIONS
    }


def _differences(old: Any, new: Any, pointer: str = "") -> list[str]:
    """Where two JSON documents differ, as JSON pointers."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(old.keys() | new.keys()):
            child = f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}"
            if key not in new or key not in old:
                found.append(f"{child} {'removed' if key not in new else 'added'}")
            else:
                found += _differences(old[key], new[key], child)
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [
            found
            for index, pair in enumerate(zip(old, new, strict=True))
            for found in _differences(*pair, f"{pointer}/{index}")
        ]
    # The type too: Python holds True == 1, JSON Schema does not.
    return [] if type(old) is type(new) and old == new else [f"{pointer or '/'} changed"]


def event_breaking_changes(released_dir: Path, current_dir: Path) -> list[str]:
    """Each released event schema must still validate exactly the same documents, annotations aside."""
    found = []
    for released_file in sorted(released_dir.glob("*.json")):
        current_file = current_dir / released_file.name
        if not current_file.exists():
            found.append(
                f"events/{released_file.name}: removed (consumers of that version may still receive it)"
            )
            continue
        released = _without_annotations(json.loads(released_file.read_text()))
        current = _without_annotations(json.loads(current_file.read_text()))
        if differences := _differences(released, current):
            match = EVENT_FILE.fullmatch(released_file.name)
            successor = (
                f"{match['type']}.v{int(match['version']) + 1}.json" if match else "a new data version"
            )
            found.append(
                f"events/{released_file.name}: changed ({', '.join(differences)}); "
                f"a released data version never changes: publish the change as {successor}"
            )
    return found


# AsyncAPI -----------------------------------------------------------------------------------------


def _event_schema_files(
    document: dict[str, Any], node: Any, followed: frozenset[str] = frozenset()
) -> set[str]:
    """The names of the event schema files (events/...) that a node refers to, directly or not."""
    if isinstance(node, list):
        return {name for item in node for name in _event_schema_files(document, item, followed)}
    if not isinstance(node, dict):
        return set()
    files = set()
    reference = node.get("$ref")
    if isinstance(reference, str) and not reference.startswith("#"):  # another file: a leaf
        file = PurePosixPath(reference.partition("#")[0])
        if file.parent.name == "events":
            files.add(file.name)
    elif isinstance(reference, str) and reference not in followed:  # not round a cycle twice
        files |= _event_schema_files(document, _pointer(document, reference), followed | {reference})
    return files | {
        name
        for key, value in node.items()
        if key != "$ref"
        for name in _event_schema_files(document, value, followed)
    }


def _channel_messages(document: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """Each message of each channel, by (channel, message name), with its payload's event schema files."""
    messages = {}
    for channel_name, channel in document.get("channels", {}).items():
        for message_name, message in _resolve(document, channel).get("messages", {}).items():
            payload = _resolve(document, message).get("payload")
            messages[(channel_name, message_name)] = _event_schema_files(document, payload)
    return messages


def asyncapi_breaking_changes(released: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Released messages and operations that the current AsyncAPI document lost or changed.

    The event schemas' content is event_breaking_changes' to compare; here, that each message still
    travels where it did, carrying the same schema file."""
    found = []
    current_messages = _channel_messages(current)
    for (channel, name), files in _channel_messages(released).items():
        where = f"asyncapi.yaml: channel {channel}, message {name}"
        if (channel, name) not in current_messages:
            found.append(f"{where}: removed (its consumers no longer get it there)")
        elif current_messages[(channel, name)] != files:
            found.append(
                f"{where}: payload now {sorted(current_messages[(channel, name)])}, was {sorted(files)}"
            )
    current_operations = current.get("operations", {})
    for name, operation in released.get("operations", {}).items():
        where = f"asyncapi.yaml: operation {name}"
        if name not in current_operations:
            found.append(f"{where}: removed")
            continue
        for key in ("action", "channel"):
            was, now = operation.get(key), current_operations[name].get(key)
            if was != now:
                found.append(f"{where}: {key} changed: {json.dumps(was)} -> {json.dumps(now)}")
    return found


# The repository -----------------------------------------------------------------------------------


def breaking_changes(root: Path) -> list[str]:
    """Every breaking change of the current contracts since the release snapshotted under root."""
    released, contracts = root / RELEASED, root / CONTRACTS
    return [
        *openapi_breaking_changes(json.loads((released / "openapi.json").read_text()), public_contract()),
        *asyncapi_breaking_changes(
            yaml.safe_load((released / "asyncapi.yaml").read_text()),
            yaml.safe_load((contracts / "asyncapi.yaml").read_text()),
        ),
        *event_breaking_changes(released / "events", contracts / "events"),
    ]


def release(root: Path) -> None:
    """Snapshot the current contracts as released: what the next check compares against."""
    released, contracts = root / RELEASED, root / CONTRACTS
    released.mkdir(parents=True, exist_ok=True)
    (released / "openapi.json").write_text(json.dumps(public_contract(), indent=2) + "\n")
    shutil.copyfile(contracts / "asyncapi.yaml", released / "asyncapi.yaml")
    # A copy of the directory as it is: a schema file no longer there is no longer released.
    shutil.rmtree(released / "events", ignore_errors=True)
    shutil.copytree(contracts / "events", released / "events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack.contract_changes",
        description="Compare the contracts with the last released ones; exit 1 on a breaking change.",
    )
    parser.add_argument("--release", action="store_true", help="snapshot the current contracts as released")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    arguments = parser.parse_args(argv)
    first_release = not (arguments.root / RELEASED / "openapi.json").exists()
    changes = [] if arguments.release and first_release else breaking_changes(arguments.root)
    if arguments.release:
        for change in changes:
            print(f"released, breaking: {change}")
        release(arguments.root)
        print(f"released: the current contracts are in {arguments.root / RELEASED}")
        return 0
    for change in changes:
        print(change)
    if changes:
        print(
            f"{len(changes)} breaking change(s) since the last release: publish them as a new version "
            "(/api/v2/..., <type>.v<N+1>.json) beside the old one",
            file=sys.stderr,
        )
        return 1
    print("contracts: no breaking change since the last release")
    return 0


if __name__ == "__main__":
    sys.exit(main())
