"""The contract's request schemas, compiled by shared.openapi, and the errors they produce."""

from pathlib import Path
from typing import Any

import pytest

from shared.http import MAX_JSON_DEPTH, json_depth
from shared.openapi import OpenApiSpec, _field_errors, _nul_characters
from shared.problems import Problem

ROOT = Path(__file__).resolve().parents[2]


def body_errors(service: str, method: str, path: str, body: Any) -> list[dict[str, str]]:
    operation = OpenApiSpec.load(ROOT / service / "openapi.yaml").operations[(method, path)]
    assert operation.body is not None
    return [entry for error in operation.body.iter_errors(body) for entry in _field_errors(error)]


def test_a_valid_registration_has_no_errors() -> None:
    body = {"email": "ada@example.com", "name": "Ada", "password": "long enough"}
    assert body_errors("users_service", "POST", "/api/users", body) == []


def test_each_bad_field_is_named_by_a_json_pointer() -> None:
    errors = body_errors(
        "users_service", "POST", "/api/users", {"email": "nope", "password": "short", "credit_used_cents": 5}
    )
    pointers = {entry["pointer"] for entry in errors}
    assert pointers == {"#/email", "#/name", "#/password", "#/credit_used_cents"}


def test_messages_never_echo_the_value() -> None:
    errors = body_errors(
        "users_service", "POST", "/api/users", {"email": "a@b.c", "name": "A", "password": "s3cr"}
    )
    assert errors == [{"pointer": "#/password", "detail": "must be at least 8 characters long"}]


@pytest.mark.parametrize(
    ("items", "pointer"),
    [
        ([], "#/items"),
        ([{"sku": "A", "quantity": 0, "unit_price_cents": 1}], "#/items/0/quantity"),
        ([{"sku": "A", "quantity": 1001, "unit_price_cents": 1}], "#/items/0/quantity"),
        ([{"sku": "A B", "quantity": 1, "unit_price_cents": 1}], "#/items/0/sku"),
        ([{"sku": "A" * 65, "quantity": 1, "unit_price_cents": 1}], "#/items/0/sku"),
        ([{"sku": "A", "quantity": 1, "unit_price_cents": -1}], "#/items/0/unit_price_cents"),
        ([{"sku": "A", "quantity": 1, "unit_price_cents": 10_000_001}], "#/items/0/unit_price_cents"),
        ([{"sku": "A", "quantity": 1}], "#/items/0/unit_price_cents"),
        ([{"sku": "A", "quantity": "1", "unit_price_cents": 1}], "#/items/0/quantity"),
        ([{"sku": "A", "quantity": 1, "unit_price_cents": 1}] * 101, "#/items"),
    ],
)
def test_order_items_are_bounded(items: list[dict[str, Any]], pointer: str) -> None:
    errors = body_errors("orders_service", "POST", "/api/orders", {"items": items})
    assert [entry["pointer"] for entry in errors] == [pointer]


@pytest.mark.parametrize(
    ("items", "pointer"),
    [
        ([], "#/items"),
        ([{"sku": "A", "quantity": 0}], "#/items/0/quantity"),
        ([{"sku": "A", "quantity": 1001}], "#/items/0/quantity"),
        ([{"sku": "A B", "quantity": 1}], "#/items/0/sku"),
        ([{"sku": "A" * 65, "quantity": 1}], "#/items/0/sku"),
        ([{"sku": "A"}], "#/items/0/quantity"),
        ([{"sku": "A", "quantity": 1}] * 101, "#/items"),
        # The catalogue prices an order in version 2: a price is no field of its items.
        ([{"sku": "A", "quantity": 1, "unit_price_cents": 1}], "#/items/0/unit_price_cents"),
    ],
)
def test_version_2_order_items_are_bounded_and_carry_no_price(
    items: list[dict[str, Any]], pointer: str
) -> None:
    errors = body_errors("orders_service", "POST", "/api/v2/orders", {"items": items})
    assert [entry["pointer"] for entry in errors] == [pointer]


def test_version_2_registration_takes_no_credit_limit_and_version_1_still_does() -> None:
    body = {"email": "ada@example.com", "name": "Ada", "password": "long enough", "credit_limit_cents": 5000}
    assert body_errors("users_service", "POST", "/api/v2/users", body) == [
        {"pointer": "#/credit_limit_cents", "detail": "is not an accepted field"}
    ]
    assert body_errors("users_service", "POST", "/api/users", body) == []


@pytest.mark.parametrize(
    ("change", "pointer"),
    [
        ({"name": "", "price_cents": 1, "active": True}, "#/name"),
        ({"name": "x" * 201, "price_cents": 1, "active": True}, "#/name"),
        ({"name": "Mug", "price_cents": -1, "active": True}, "#/price_cents"),
        ({"name": "Mug", "price_cents": 10_000_001, "active": True}, "#/price_cents"),
        ({"name": "Mug", "price_cents": 1, "active": "yes"}, "#/active"),
        ({"name": "Mug", "price_cents": 1}, "#/active"),
        ({"name": "Mug", "price_cents": 1, "active": True, "sku": "OTHER"}, "#/sku"),
    ],
)
def test_a_product_change_is_bounded(change: dict[str, Any], pointer: str) -> None:
    errors = body_errors("orders_service", "PUT", "/api/v2/products/{sku}", change)
    assert [entry["pointer"] for entry in errors] == [pointer]


@pytest.mark.parametrize(
    ("limit", "valid"), [(0, True), (10_000_000, True), (-1, False), (10_000_001, False), (1.5, False)]
)
def test_a_credit_limit_is_bounded(limit: object, valid: bool) -> None:
    errors = body_errors(
        "users_service", "PUT", "/api/v2/users/{id}/credit-limit", {"credit_limit_cents": limit}
    )
    assert [entry["pointer"] for entry in errors] == ([] if valid else ["#/credit_limit_cents"])


def test_a_body_that_is_not_an_object_is_refused() -> None:
    assert body_errors("orders_service", "POST", "/api/orders", [1, 2]) == [
        {"pointer": "#/", "detail": "must be of type object"}
    ]


def test_problem_response_has_the_rfc_9457_members() -> None:
    response = Problem(404, "No order with that id is visible to you.").to_response()
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert response.body == (
        b'{"type":"about:blank","title":"Not Found","status":404,'
        b'"detail":"No order with that id is visible to you."}'
    )


def nested(depth: int, innermost: Any = None) -> Any:
    document = innermost
    for level in range(depth):
        document = [document] if level % 2 else {"k": document}
    return document


@pytest.mark.parametrize(
    ("document", "depth"),
    [(1, 0), ("s", 0), ([], 1), ({}, 1), ([[]], 2), ({"a": [1, {"b": []}]}, 4), (nested(5_000), 5_000)],
)
def test_json_depth_counts_the_deepest_nesting_without_recursing(document: Any, depth: int) -> None:
    assert json_depth(document) == depth


def test_the_depth_limit_leaves_room_for_every_contract() -> None:
    order = {"items": [{"sku": "A", "quantity": 1, "unit_price_cents": 1}]}
    assert json_depth(order) < MAX_JSON_DEPTH < 1_000  # 1,000: where recursion in Python stops


def test_nul_characters_are_found_at_any_depth_without_recursing() -> None:
    # Deeper than the interpreter's recursion limit: the walk keeps a stack of its own.
    document = {"name": nested(5_000, "a\x00b"), "email": "ok", "notes": ["\x00"]}
    pointers = [entry["pointer"] for entry in _nul_characters(document)]
    assert sorted(pointers) == ["#/name" + "/0/k" * 2_500, "#/notes/0"]
    assert list(_nul_characters(nested(5_000, "clean"))) == []
