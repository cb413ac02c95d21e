"""The service's OpenAPI document is the contract, and the running service is held to it.

At start-up every operation's schemas are compiled once into validators; a middleware then checks
each request before its handler runs: the bearer token where the operation is secured, and the
roles its security requirement names (`bearerAuth: [admin]`: 403 without them), the query
parameters, and the JSON body. Handlers receive input that already matches the contract. The same
compiled contract checks responses (`response_errors`), which the tests apply to every response.

References may point into other files (`../shared/contracts/http.yaml#/...`, the problem shapes
every service shares); they are resolved from disk, relative to the document that names them.
"""

import dataclasses
import functools
import itertools
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiohttp import web
from aiohttp.typedefs import Handler
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from shared.auth import AUTHENTICATED_ROLES, AUTHENTICATED_USER, TOKEN_VERIFIER
from shared.http import read_json
from shared.problems import forbidden, validation_problem

VALIDATED_BODY: web.RequestKey[dict[str, Any]] = web.RequestKey("validated_body", dict)
VALIDATED_QUERY: web.RequestKey[dict[str, Any]] = web.RequestKey("validated_query", dict)
METHODS = ("get", "put", "post", "patch", "delete")


@dataclasses.dataclass(frozen=True)
class QueryParameter:
    name: str
    required: bool
    is_integer: bool
    validator: Draft202012Validator


@dataclasses.dataclass(frozen=True)
class Operation:
    secured: bool
    # The roles a token must grant, as the security requirement names them: OpenAPI 3.1 lets a
    # bearer scheme's requirement list role names (where OAuth lists scopes).
    roles: frozenset[str]
    body: Draft202012Validator | None
    query: tuple[QueryParameter, ...]
    # status -> media type -> validator of the body (None: the response has no body)
    responses: dict[int, dict[str, Draft202012Validator | None]]


@dataclasses.dataclass(frozen=True)
class _Located:
    """A node of a contract document and where it is (document URI, JSON pointer)."""

    uri: str
    pointer: str
    contents: Any

    def child(self, *keys: str | int) -> "_Located":
        node, pointer = self.contents, self.pointer
        for key in keys:
            node = node[key]
            pointer += "/" + str(key).replace("~", "~0").replace("/", "~1")
        return _Located(self.uri, pointer, node)

    @property
    def ref(self) -> str:
        return f"{self.uri}#{urllib.parse.quote(self.pointer, safe='/~')}"


@functools.cache
def _retrieve(uri: str) -> Resource[Any]:
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    return Resource.from_contents(yaml.safe_load(path.read_text()), default_specification=DRAFT202012)


class OpenApiSpec:
    def __init__(self, document: dict[str, Any], uri: str) -> None:
        self.document = document
        self.uri = uri
        self._registry: Registry[Any] = Registry(retrieve=_retrieve).with_resource(  # type: ignore[call-arg]
            uri, Resource.from_contents(document, default_specification=DRAFT202012)
        )
        self._resolver = self._registry.resolver(base_uri=uri)
        default_security = document.get("security", [])
        root = _Located(uri, "", document)
        self.operations: dict[tuple[str, str], Operation] = {}
        for path in document["paths"]:
            item = self._follow(root.child("paths", path))
            shared_parameters = item.contents.get("parameters", [])
            for method in METHODS:
                if method not in item.contents:
                    continue
                operation = item.child(method)
                parameters = [
                    *(self._follow(item.child("parameters", i)) for i in range(len(shared_parameters))),
                    *(
                        self._follow(operation.child("parameters", i))
                        for i in range(len(operation.contents.get("parameters", [])))
                    ),
                ]
                security = operation.contents.get("security", default_security)
                self.operations[(method.upper(), path)] = Operation(
                    secured=bool(security),
                    roles=frozenset(
                        role for requirement in security for roles in requirement.values() for role in roles
                    ),
                    body=self._body_validator(operation),
                    query=tuple(self._query_parameter(p) for p in parameters if p.contents["in"] == "query"),
                    responses=self._response_validators(operation),
                )

    @classmethod
    def load(cls, path: Path) -> "OpenApiSpec":
        return cls(yaml.safe_load(path.read_text()), path.resolve().as_uri())

    def _follow(self, node: _Located) -> _Located:
        """The node a `$ref` points to (through any chain of them), or the node itself."""
        while isinstance(node.contents, dict) and "$ref" in node.contents:
            target = urllib.parse.urljoin(node.uri, node.contents["$ref"])
            document_uri, _, fragment = target.partition("#")
            node = _Located(
                document_uri, urllib.parse.unquote(fragment), self._resolver.lookup(target).contents
            )
        return node

    def _validator(self, schema: _Located) -> Draft202012Validator:
        return Draft202012Validator({"$ref": schema.ref}, registry=self._registry)

    def _body_validator(self, operation: _Located) -> Draft202012Validator | None:
        if "requestBody" not in operation.contents:
            return None
        body = self._follow(operation.child("requestBody"))
        return self._validator(body.child("content", "application/json", "schema"))

    def _query_parameter(self, parameter: _Located) -> QueryParameter:
        schema = self._follow(parameter.child("schema"))
        return QueryParameter(
            name=parameter.contents["name"],
            required=parameter.contents.get("required", False),
            is_integer=schema.contents.get("type") == "integer",
            validator=self._validator(schema),
        )

    def _response_validators(self, operation: _Located) -> dict[int, dict[str, Draft202012Validator | None]]:
        validators: dict[int, dict[str, Draft202012Validator | None]] = {}
        for status in operation.contents.get("responses", {}):
            response = self._follow(operation.child("responses", status))
            content = response.contents.get("content", {})
            validators[int(status)] = {
                media_type: self._validator(response.child("content", media_type, "schema"))
                if "schema" in content[media_type]
                else None
                for media_type in content
            }
        return validators

    def operation_for(self, request: web.Request) -> Operation | None:
        resource = request.match_info.route.resource
        if resource is None:
            return None  # unmatched: the router answers 404 or 405 itself
        return self.operations.get((request.method, resource.canonical))

    def response_errors(self, method: str, path: str, status: int, media_type: str, body: bytes) -> list[str]:
        """How a response breaks the contract of operation (method, path); empty if it does not."""
        operation = self.operations.get((method, path))
        if operation is None:
            return [f"{method} {path} is not in the contract"]
        if status not in operation.responses:
            return [f"{method} {path} answered {status}, which the contract does not list"]
        media_types = operation.responses[status]
        if not media_types:
            return [] if not body else [f"{method} {path} {status} has a body; the contract says none"]
        if media_type not in media_types:
            return [f"{method} {path} {status} is {media_type}; the contract says {sorted(media_types)}"]
        validator = media_types[media_type]
        if validator is None:
            return []
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return [f"{method} {path} {status}: the body is not JSON"]
        where = f"{method} {path} {status}"
        return [
            f"{where}: {'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message}"
            for error in validator.iter_errors(document)
        ]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        operation = self.operation_for(request)
        if operation is not None:
            if operation.secured:
                principal = request.app[TOKEN_VERIFIER].principal_from_request(request)
                missing = operation.roles - principal.roles
                if missing:
                    raise forbidden(min(missing))
                request[AUTHENTICATED_USER] = principal.user_id
                request[AUTHENTICATED_ROLES] = principal.roles
            request[VALIDATED_QUERY] = _validated_query(request, operation.query)
            if operation.body is not None:
                body = await read_json(request)
                schema_errors = (
                    entry for error in operation.body.iter_errors(body) for entry in _field_errors(error)
                )
                _raise_if_invalid(itertools.chain(schema_errors, _nul_characters(body)))
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


# A string holding U+0000 is valid JSON, but no Postgres text column can store one. The contracts
# say so with this pattern on their free-text fields; every other string is checked as well, so
# that a field that forgot the pattern fails as a 422 here rather than as a 500 in the database.
NO_NUL_CHARACTER = "^[^\\u0000]*$"
NUL_CHARACTER_REFUSED = "must not contain the NUL character (U+0000)"


def _nul_characters(document: Any) -> Iterator[dict[str, str]]:
    """Fields holding U+0000, whatever their schema says (see NO_NUL_CHARACTER).

    It walks the document with a stack of its own rather than by recursion: read_json bounds the
    depth already, and this check must not be the place where the depth a client chose decides
    how deep the interpreter's stack goes."""
    pending: list[tuple[Any, list[str]]] = [(document, [])]
    while pending:
        node, path = pending.pop()
        if isinstance(node, str):
            if "\x00" in node:
                yield _entry(path, NUL_CHARACTER_REFUSED)
        elif isinstance(node, dict):
            pending.extend((value, [*path, str(key)]) for key, value in node.items())
        elif isinstance(node, list):
            pending.extend((value, [*path, str(index)]) for index, value in enumerate(node))


# What each rule requires, said without the value (it may be a password).
_RULES = {
    "type": "must be of type {}",
    "minLength": "must be at least {} characters long",
    "maxLength": "must be at most {} characters long",
    "minimum": "must be at least {}",
    "maximum": "must be at most {}",
    "minItems": "must have at least {} items",
    "maxItems": "must have at most {} items",
    "pattern": "must match the pattern {}",
    "const": "must be {}",
}


def _describe(error: ValidationError) -> str:
    """A message that names the rule but never echoes the value (it may be a password)."""
    limit: Any = error.validator_value
    if error.validator == "pattern" and limit == NO_NUL_CHARACTER:
        return NUL_CHARACTER_REFUSED
    if error.validator == "enum":
        return "must be one of " + ", ".join(map(str, limit))
    rule = _RULES.get(str(error.validator))
    return rule.format(limit) if rule is not None else f"fails the {error.validator!r} rule"


def _entry(path: list[str], detail: str) -> dict[str, str]:
    pointer = "#/" + "/".join(part.replace("~", "~0").replace("/", "~1") for part in path)
    return {"pointer": pointer, "detail": detail}
