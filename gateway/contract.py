"""The public contract: both services' operations as clients see them through the gateway.

Built at start from the services' own OpenAPI documents (never written by hand a second time):
their paths are already the public ones, references into shared/contracts are copied in, so the
result stands alone, and every proxied operation also documents what the gateway itself may
answer: 401 before the service is asked; 414 or 431 for an oversized URL or headers; 429 for a
client over its rate; 408 for a body that does not arrive in time; 502, 503 or 504 when the service
fails (or its circuit is open). Every response of a deprecated operation documents the deprecation
headers it carries (shared/api_versions.py).
"""

import copy
import dataclasses
import importlib.resources
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from shared.api_versions import DEPRECATED

SERVICES = ("users_service", "orders_service")
SHARED_HTTP_CONTRACT = Path(str(importlib.resources.files("shared") / "contracts" / "http.yaml"))
GATEWAY_HEALTH = {
    "/healthz": {
        "get": {
            "operationId": "gatewayHealth",
            "tags": ["health"],
            "summary": "The gateway is alive",
            "security": [],
            "responses": {"200": {"$ref": "#/components/responses/Healthy"}},
        }
    },
    "/readyz": {
        "get": {
            "operationId": "gatewayReadiness",
            "tags": ["health"],
            "summary": "The gateway can take requests; how each upstream service is doing",
            "description": (
                "Ready whenever the gateway is up: an upstream's outage is every replica's, so it is "
                "reported here but never takes the gateway out of rotation (the routes of that "
                "upstream answer 503 meanwhile)."
            ),
            "security": [],
            "responses": {"200": {"$ref": "#/components/responses/GatewayReady"}},
        }
    },
    "/metrics": {
        "get": {
            "operationId": "gatewayMetrics",
            "tags": ["health"],
            "summary": "Prometheus metrics of the gateway (requests by route, status and duration)",
            "security": [],
            "responses": {"200": {"$ref": "#/components/responses/Metrics"}},
        }
    },
}
UPSTREAM_FAILURES = {
    status: {"$ref": "#/components/responses/UpstreamFailure"} for status in ("502", "503", "504")
}
# The gateway's own refusals at the edge (gateway/edge.py), before a service is asked.
EDGE_REFUSALS = {
    "414": {"$ref": "#/components/responses/UriTooLong"},
    "429": {"$ref": "#/components/responses/TooManyRequests"},
    "431": {"$ref": "#/components/responses/HeadersTooLarge"},
}
GATEWAY_READY = {
    "description": "The gateway takes requests; `checks` says which upstream services are ready.",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["status", "checks"],
                "properties": {
                    "status": {"const": "ready"},
                    "checks": {
                        "type": "object",
                        "additionalProperties": {"enum": ["ok", "unavailable", "timeout"]},
                    },
                },
            },
            "example": {
                "status": "ready",
                "checks": {"users_service": "ok", "orders_service": "unavailable"},
            },
        }
    },
}
# The gateway reads a request's body whole before it calls the service (gateway/proxy.py).
BODY_TIMEOUT = {
    "description": "The request's body did not arrive within the gateway's time limit.",
    "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
    "content": {
        "application/problem+json": {
            "schema": {"$ref": "#/components/schemas/Problem"},
            "example": {
                "type": "about:blank",
                "title": "Request Timeout",
                "status": 408,
                "detail": "The request body did not arrive within 10 seconds.",
            },
        }
    },
}
# What every answer of a deprecated operation carries, the values included: they are part of it.
DEPRECATION_HEADERS = {
    "Deprecation": {
        "description": "When this operation was deprecated (RFC 9745): @ and seconds since the epoch.",
        "schema": {"type": "string", "example": DEPRECATED.headers()["Deprecation"]},
    },
    "Sunset": {
        "description": "When this operation stops answering (RFC 8594).",
        "schema": {"type": "string", "example": DEPRECATED.headers()["Sunset"]},
    },
    "Link": {
        "description": "The migration note (rel=deprecation and rel=sunset).",
        "schema": {"type": "string", "example": DEPRECATED.headers()["Link"]},
    },
}
# The order in which /docs shows the operations: the catalogue and orders first, as a client meets
# them; version 1 after every operation of version 2; health last.
TAG_ORDER = ("products", "orders", "users", "auth", "admin", "v1 (deprecated)", "health")
GATEWAY_RESPONSES = (
    "UpstreamFailure",
    "UriTooLong",
    "TooManyRequests",
    "HeadersTooLarge",
    "Healthy",
    "Metrics",
)


def service_contract_path(service: str) -> Path:
    return Path(str(importlib.resources.files(service) / "openapi.yaml"))


def public_contract() -> dict[str, Any]:
    contract: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "eda-reference public API",
            "version": "2.0.0",
            "description": (
                "Everything a client can call, through the gateway. Built from the services' own "
                "contracts (users_service/openapi.yaml, orders_service/openapi.yaml). Errors are RFC 9457 "
                "problems. Sign in with POST /api/v2/auth/token, then use Authorize with the "
                "access_token.\n\n"
                "Version 2 is under /api/v2. Version 1, under /api, is deprecated and answers until "
                f"{DEPRECATED.sunset_at:%Y-%m-%d}, each answer with Deprecation, Sunset and Link headers; "
                f"how to move: {DEPRECATED.migration_note}."
            ),
        },
        "servers": [{"url": "/", "description": "this gateway"}],
        "security": [{"bearerAuth": []}],
        "tags": [],
        "paths": {},
        "components": {},
    }
    tags: dict[str, dict[str, Any]] = {}
    for service in SERVICES:
        document = _bundled(service_contract_path(service))
        for tag in document.get("tags", []):
            tags.setdefault(tag["name"], tag)
        for path, item in document["paths"].items():
            if path not in GATEWAY_HEALTH:  # each service's own health; the gateway publishes its own
                contract["paths"][path] = _with_edge_responses(item)
        _merge_components(contract["components"], document.get("components", {}))
    contract["paths"].update(copy.deepcopy(GATEWAY_HEALTH))
    contract["tags"] = sorted(tags.values(), key=_tag_position)
    # What the gateway itself answers is described in the shared contract too.
    shared = yaml.safe_load(SHARED_HTTP_CONTRACT.read_text())["components"]
    responses = contract["components"].setdefault("responses", {})
    for name in GATEWAY_RESPONSES:
        responses.setdefault(name, shared["responses"][name])
    responses["GatewayReady"] = copy.deepcopy(GATEWAY_READY)
    responses["BodyTimeout"] = copy.deepcopy(BODY_TIMEOUT)
    _document_deprecation(contract)
    return contract


def _tag_position(tag: dict[str, Any]) -> int:
    """Where a tag goes on /docs: as TAG_ORDER says, and a tag it does not name after the rest."""
    return TAG_ORDER.index(tag["name"]) if tag["name"] in TAG_ORDER else len(TAG_ORDER)


def _with_edge_responses(item: dict[str, Any]) -> dict[str, Any]:
    """A path's operations, with what the gateway itself may answer for any of them."""
    for operation in item.values():
        if isinstance(operation, dict) and "responses" in operation:
            operation["responses"].update(copy.deepcopy(EDGE_REFUSALS))
            if "requestBody" in operation:
                operation["responses"]["408"] = {"$ref": "#/components/responses/BodyTimeout"}
            operation["responses"].update(copy.deepcopy(UPSTREAM_FAILURES))
    return item


def _document_deprecation(contract: dict[str, Any]) -> None:
    """Each response of a deprecated operation lists the deprecation headers; a response defined
    once and shared by reference gets a deprecated copy of its own, so that the others stay as
    they were."""
    responses = contract["components"].setdefault("responses", {})
    for item in contract["paths"].values():
        for operation in item.values():
            if not (isinstance(operation, dict) and operation.get("deprecated")):
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    name = response["$ref"].rsplit("/", 1)[1]
                    deprecated_name = f"{name}Deprecated"
                    if deprecated_name not in responses:
                        responses[deprecated_name] = _with_deprecation_headers(responses[name])
                    operation["responses"][status] = {"$ref": f"#/components/responses/{deprecated_name}"}
                else:
                    operation["responses"][status] = _with_deprecation_headers(response)


def _with_deprecation_headers(response: dict[str, Any]) -> dict[str, Any]:
    documented = copy.deepcopy(response)
    documented.setdefault("headers", {}).update(copy.deepcopy(DEPRECATION_HEADERS))
    return documented


def _merge_components(merged: dict[str, Any], components: dict[str, Any]) -> None:
    for kind, named in components.items():
        into = merged.setdefault(kind, {})
        for name, component in named.items():
            if name in into and into[name] != component:
                raise ValueError(f"two services define components/{kind}/{name} differently")
            into[name] = component


def _bundled(path: Path) -> dict[str, Any]:
    """The document, with every reference into another file replaced by a copy of its target
    under the same components name, so that it stands alone."""
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    bundler = _Bundler(document.setdefault("components", {}))
    for key in ("paths", "components"):
        document[key] = bundler.inline(document[key], path)
    return document


@dataclasses.dataclass
class _Bundler:
    components: dict[str, Any]  # the document's own, which the copies join

    def inline(self, node: Any, base: Path) -> Any:
        if isinstance(node, list):
            return [self.inline(item, base) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref")
        if isinstance(reference, str) and not reference.startswith("#"):
            file_part, _, fragment = reference.partition("#")
            target_file = (base.parent / urllib.parse.unquote(file_part)).resolve()
            _, kind, name = fragment.strip("/").split("/")  # only components/<kind>/<name> is used
            if name not in self.components.get(kind, {}):
                self._adopt(kind, name, yaml.safe_load(target_file.read_text()), target_file)
            return {**node, "$ref": f"#/components/{kind}/{name}"}
        return {key: self.inline(value, base) for key, value in node.items()}

    def _adopt(self, kind: str, name: str, external: dict[str, Any], external_file: Path) -> None:
        """Copy a component of another file in, with the components of its own file it refers to."""
        self.components.setdefault(kind, {})[name] = {}  # placeholder: the target may refer to itself
        self.components[kind][name] = self.inline(external["components"][kind][name], external_file)
        self._adopt_dependencies(self.components[kind][name], external, external_file)

    def _adopt_dependencies(self, node: Any, external: dict[str, Any], external_file: Path) -> None:
        # The copied component may refer to others of its own file ("#/components/schemas/Problem").
        if isinstance(node, list):
            for item in node:
                self._adopt_dependencies(item, external, external_file)
        elif isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/components/"):
                _, kind, name = reference.strip("#/").split("/")
                if name not in self.components.get(kind, {}):
                    self._adopt(kind, name, external, external_file)
            for value in node.values():
                self._adopt_dependencies(value, external, external_file)
