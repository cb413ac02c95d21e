"""The contracts are valid OpenAPI 3.1, and code and contract cannot drift apart unnoticed."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from openapi_spec_validator import validate
from openapi_spec_validator.readers import read_from_filename

from devstack.keys import KeyPair
from gateway.contract import public_contract
from gateway.routes import ROUTES
from orders_service.app import create_app as create_orders_app
from orders_service.config import OrdersConfig
from shared.app_keys import CONTRACT
from shared.openapi import OpenApiSpec
from tests.contract import undocumented_routes, unserved_operations
from users_service.app import create_app as create_users_app
from users_service.config import UsersConfig

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ["users_service/openapi.yaml", "orders_service/openapi.yaml", "shared/contracts/http.yaml"]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_each_contract_is_valid_openapi_3_1(document: str) -> None:
    spec, base_uri = read_from_filename(str(ROOT / document))
    assert spec["openapi"] == "3.1.0"
    validate(spec, base_uri=base_uri)


def test_the_public_contract_is_valid_and_stands_alone() -> None:
    contract = public_contract()
    validate(contract)
    assert "http.yaml" not in str(contract)  # every reference was brought in


OWN_PATHS = {"/healthz", "/readyz", "/metrics"}  # each process's own, not forwarded


def test_the_public_contract_lists_exactly_what_the_gateway_routes() -> None:
    contract = public_contract()
    documented = {
        (method.upper(), path)
        for path, item in contract["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"} and path not in OWN_PATHS
    }
    assert documented == {(route.method, route.path) for route in ROUTES}


@pytest.fixture
def apps(key_pair: KeyPair) -> list[web.Application]:
    """The real apps, built but not started: their routers are what they will serve."""
    keys = {"JWT_PUBLIC_KEY_FILE": str(key_pair.public), "JWT_PRIVATE_KEY_FILE": str(key_pair.private)}
    return [create_users_app(UsersConfig.from_env(keys)), create_orders_app(OrdersConfig.from_env(keys))]


def test_every_route_is_documented_and_every_operation_is_served(apps: list[web.Application]) -> None:
    for app in apps:
        assert undocumented_routes(app) == set()
        assert unserved_operations(app) == set()


def test_a_route_missing_from_the_contract_is_caught(apps: list[web.Application]) -> None:
    async def secret(_: web.Request) -> web.Response:
        return web.Response()

    users = apps[0]
    users.router.add_get("/api/admin/everything", secret)
    assert undocumented_routes(users) == {("GET", "/api/admin/everything")}


def test_an_operation_with_no_route_is_caught(apps: list[web.Application]) -> None:
    orders = apps[1]
    orders[CONTRACT].operations[("DELETE", "/api/orders/{id}")] = orders[CONTRACT].operations[
        ("GET", "/api/orders/{id}")
    ]
    assert unserved_operations(orders) == {("DELETE", "/api/orders/{id}")}


@pytest.mark.parametrize(
    ("status", "media_type", "body", "complaint"),
    [
        (200, "application/json", b'{"id": "x"}', "'user_id' is a required property"),
        (200, "application/json", b"not json", "the body is not JSON"),
        (200, "text/html", b"<p>hi</p>", "the contract says ['application/json']"),
        (418, "application/json", b"{}", "answered 418, which the contract does not list"),
        (
            404,
            "application/problem+json",
            b'{"title": "Not Found", "status": 404}',
            "'type' is a required property",
        ),
    ],
    ids=["missing-field", "not-json", "wrong-media-type", "undocumented-status", "bad-problem"],
)
def test_a_broken_response_is_caught(
    apps: list[web.Application], status: int, media_type: str, body: bytes, complaint: str
) -> None:
    errors = apps[1][CONTRACT].response_errors("GET", "/api/orders/{id}", status, media_type, body)
    assert any(complaint in error for error in errors), errors


def operations_of(document: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(method, path) -> the operation, as the contract file has it."""
    contract = yaml.safe_load((ROOT / document).read_text())
    return {
        (method.upper(), path): operation
        for path, item in contract["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }


SERVICE_CONTRACTS = DOCUMENTS[:2]
# Version 2's operations that version 1 never had: the catalogue, and an admin's credit limits.
ONLY_IN_VERSION_2 = {"listProducts", "getProduct", "putProduct", "setCreditLimit"}
# What only an admin may do (the token's roles must hold it), and nothing else.
FOR_ADMINS = {
    ("PUT", "/api/v2/products/{sku}"): {"admin"},
    ("PUT", "/api/v2/users/{id}/credit-limit"): {"admin"},
}


def test_every_version_1_operation_is_deprecated_beside_its_version_2_twin() -> None:
    version_1: dict[tuple[str, str], str] = {}
    version_2: dict[tuple[str, str], str] = {}
    for document in SERVICE_CONTRACTS:
        for (method, path), operation in operations_of(document).items():
            if path.startswith("/api/v2/"):
                assert not operation.get("deprecated"), (method, path)
                version_2[method, path.removeprefix("/api/v2")] = operation["operationId"]
            elif path.startswith("/api/"):
                assert operation.get("deprecated") is True, (method, path)
                assert operation["tags"] == ["v1 (deprecated)"], (method, path)
                version_1[method, path.removeprefix("/api")] = operation["operationId"]
    # Each twin keeps the released name with a V2 suffix, so that generated clients keep theirs.
    assert {key: f"{name}V2" for key, name in version_1.items()} == {
        key: name for key, name in version_2.items() if key in version_1
    }
    assert {name for key, name in version_2.items() if key not in version_1} == ONLY_IN_VERSION_2


def test_only_the_admins_operations_need_a_role_and_each_may_answer_403() -> None:
    for document in SERVICE_CONTRACTS:
        spec = OpenApiSpec.load(ROOT / document)
        for key, operation in spec.operations.items():
            assert operation.roles == FOR_ADMINS.get(key, set()), key
            assert (403 in operation.responses) == (key in FOR_ADMINS), key
            if key in FOR_ADMINS:
                assert operation.secured, key


def test_every_answer_of_a_deprecated_operation_documents_the_deprecation_headers() -> None:
    contract = public_contract()
    responses = contract["components"]["responses"]
    deprecated = 0
    for path, item in contract["paths"].items():
        for method, operation in item.items():
            if not (isinstance(operation, dict) and "responses" in operation):
                continue
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    response = responses[response["$ref"].rsplit("/", 1)[1]]
                documented = set(response.get("headers", {}))
                if operation.get("deprecated"):
                    deprecated += 1
                    assert {"Deprecation", "Sunset", "Link"} <= documented, (method, path, status)
                else:
                    assert not {"Deprecation", "Sunset"} & documented, (method, path, status)
    assert deprecated, "no deprecated operation found"
