"""The service's OpenAPI document is the contract, and the running service is held to it.

At start-up every operation's request schema is compiled once into a validator; a middleware then
checks each request before its handler runs: the bearer token where the operation is secured, the
query parameters, and the JSON body. Handlers receive input that already matches the contract.
"""

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from aiohttp.typedefs import Handler
from jsonschema import Draft202012Validator, ValidationError

from shared.auth import AUTHENTICATED_USER, TOKEN_VERIFIER
from shared.http import read_json
from shared.problems import validation_problem

VALIDATED_BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("validated_body", dict)
VALIDATED_QUERY: web.RequestKey[dict[str, Any]] = web.RequestKey("validated_query", dict)


@dataclasses.dataclass(frozen=True)
class QueryParameter:
    name: str
    required: bool
    is_integer: bool
    validator: Draft202012Validator


@dataclasses.dataclass(frozen=True)
class Operation:
    secured: bool
    body: Draft202012Validator | None
    query: tuple[QueryParameter, ...]


def _validator(schema: dict[str, Any], components: dict[str, Any]) -> Draft202012Validator:
    # "$ref": "#/components/schemas/X" resolves against the root, so the components ride along.
    return Draft202012Validator({**schema, "components": components})


class OpenApiSpec:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        components = document.get("components", {})
        default_security = document.get("security", [])
        self.operations: dict[tuple[str, str], Operation] = {}
        for path, item in document["paths"].items():
            for method, spec in item.items():
                if method not in {"get", "put", "post", "patch", "delete"}:
                    continue
                body_schema = (
                    spec.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
                )
                query = tuple(
                    QueryParameter(
                        name=parameter["name"],
                        required=parameter.get("required", False),
                        is_integer=parameter["schema"].get("type") == "integer",
                        validator=_validator(parameter["schema"], components),
                    )
                    for parameter in [*item.get("parameters", []), *spec.get("parameters", [])]
                    if parameter["in"] == "query"
                )
                self.operations[(method.upper(), path)] = Operation(
                    secured=bool(spec.get("security", default_security)),
                    body=_validator(body_schema, components) if body_schema else None,
                    query=query,
                )

    @classmethod
    def load(cls, path: Path) -> "OpenApiSpec":
        return cls(yaml.safe_load(path.read_text()))

    def operation_for(self, request: web.Request) -> Operation | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None  # unmatched: the router answers 404 or 405 itself
        return self.operations.get((request.method, resource.canonical))

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        operation = self.operation_for(request)
        if operation is not None:
            if operation.secured:
                request[AUTHENTICATED_USER] = request.app[TOKEN_VERIFIER].user_id_from_request(request)
            request[VALIDATED_QUERY] = _validated_query(request, operation.query)
            if operation.body is not None:
                body = await read_json(request)
                _raise_if_invalid(
                    entry for error in operation.body.iter_errors(body) for entry in _field_errors(error)
                )
                request[VALIDATED_BODY] = body
        return await handler(request)


def _validated_query(request: web.Request, parameters: tuple[QueryParameter, ...]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    errors: list[dict[str, str]] = []
    for parameter in parameters:
        raw = request.query.get(parameter.name)
        pointer = f"#/query/{parameter.name}"
        if raw is None:
            if parameter.required:
                errors.append({"pointer": pointer, "detail": "is required"})
            continue
        value: Any = raw
        if parameter.is_integer:
            try:
                value = int(raw)
            except ValueError:
                errors.append({"pointer": pointer, "detail": "must be an integer"})
                continue
        errors.extend(
            {"pointer": pointer, "detail": _describe(error)}
            for error in parameter.validator.iter_errors(value)
        )
        values[parameter.name] = value
    _raise_if_invalid(errors)
    return values


def _raise_if_invalid(entries: Iterable[dict[str, str]]) -> None:
    """422 with one entry per bad field: the first rule it breaks, fields in pointer order."""
    first_per_field: dict[str, dict[str, str]] = {}
    for entry in entries:
        first_per_field.setdefault(entry["pointer"], entry)
    if first_per_field:
        raise validation_problem([first_per_field[pointer] for pointer in sorted(first_per_field)])


def _field_errors(error: ValidationError) -> list[dict[str, str]]:
    """One entry per bad field, as a JSON pointer into the body (RFC 9457 section 3)."""
    path = [str(part) for part in error.absolute_path]
    rule: Any = error.validator_value
    if error.validator == "required":
        # jsonschema reports a missing field at its parent; point at the field itself instead.
        missing = next(name for name in rule if error.message == f"{name!r} is a required property")
        return [_entry([*path, missing], "is required")]
    if error.validator == "additionalProperties":
        schema: Any = error.schema
        instance: Any = error.instance
        allowed = set(schema.get("properties", {}))
        unexpected = sorted(name for name in instance if name not in allowed)
        return [_entry([*path, name], "is not an accepted field") for name in unexpected]
    return [_entry(path, _describe(error))]


def _describe(error: ValidationError) -> str:
    """A message that names the rule but never echoes the value (it may be a password)."""
    limit: Any = error.validator_value
    match error.validator:
        case "type":
            return f"must be of type {limit}"
        case "minLength":
            return f"must be at least {limit} characters long"
        case "maxLength":
            return f"must be at most {limit} characters long"
        case "minimum":
            return f"must be at least {limit}"
        case "maximum":
            return f"must be at most {limit}"
        case "minItems":
            return f"must have at least {limit} items"
        case "maxItems":
            return f"must have at most {limit} items"
        case "pattern":
            return f"must match the pattern {limit}"
        case "enum":
            return "must be one of " + ", ".join(map(str, limit))
        case "const":
            return f"must be {limit}"
    return f"fails the {error.validator!r} rule"


def _entry(path: list[str], detail: str) -> dict[str, str]:
    pointer = "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in path)
    return {"pointer": pointer, "detail": detail}
