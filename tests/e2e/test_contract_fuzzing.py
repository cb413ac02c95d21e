"""Contract fuzzing: schemathesis generates requests from the gateway's own /openapi.json and checks
every answer against it (no 5xx, documented status, content type, headers and body). Bounded (a
few examples per operation) so the suite stays fast; signed in, so that the secured operations are
reached, not just refused.

Driven through schemathesis' Python API rather than its pytest plugin, whose lazy fixture loading
does not work with the pytest this project pins.
"""

import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

from tests.e2e.api import PASSWORD
from tests.e2e.conftest import Stack, StackFactory

Operation = schemathesis.APIOperation[Any, Any, Any, Any]
EXAMPLES_PER_OPERATION = 8
# Placing an order, in either version: a sku can fit its pattern and name no product the catalogue
# sells, and a version 1 price can fit its range and not be the catalogue's. Such an order is
# rightly refused (422), so "valid data is accepted" cannot hold for it.
ORDER_PLACEMENTS = {("POST", "/api/orders"), ("POST", "/api/v2/orders")}


@pytest.fixture(scope="session")
def signed_in(stack: Stack) -> dict[str, str]:
    email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "name": "Fuzz", "password": PASSWORD}
    assert requests.post(f"{stack.url}/api/v2/users", json=body, timeout=10).status_code == 201
    answer = requests.post(
        f"{stack.url}/api/v2/auth/token", json={"email": email, "password": PASSWORD}, timeout=10
    )
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def all_operations(url: str) -> list[Operation]:
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = []
    for loaded in schema.get_all_operations():
        assert isinstance(loaded, Ok), loaded  # an operation schemathesis cannot read is a contract bug
        operations.append(loaded.ok())
    return operations


def needs_admin(operation: Operation) -> bool:
    requirements: Iterable[Mapping[str, list[str]]] = operation.definition.raw.get("security", [])
    return any("admin" in roles for requirement in requirements for roles in requirement.values())


def fuzz(url: str, operations: list[Operation], headers: dict[str, str]) -> None:
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def keeps_the_contract(case: schemathesis.Case[Any]) -> None:
            # A cursor is opaque: a string can fit its schema and still not be one this API
            # issued, and that request is rightly refused (422); so is an order of what the
            # catalogue does not sell at that price (ORDER_PLACEMENTS). Every other check applies.
            unknowable = (case.query and "cursor" in case.query) or (
                (case.method.upper(), case.path) in ORDER_PLACEMENTS
            )
            case.call_and_validate(
                base_url=url,
                headers=headers,
                excluded_checks=[positive_data_acceptance] if unknowable else [],
            )

        keeps_the_contract()


def test_the_gateway_keeps_its_contract(stack: Stack, signed_in: dict[str, str]) -> None:
    operations = all_operations(stack.url)
    # Every public operation is fuzzed, both versions', health checks and metrics included; the
    # admin operations answer this user 403, as their contract says.
    assert len(operations) == 23
    fuzz(stack.url, operations, signed_in)


async def test_the_admin_operations_keep_their_contract(fresh_stack: StackFactory) -> None:
    # On a stack of its own: an admin's fuzzed products (the contract's example, BOOK-42, among
    # them) would reprice the catalogue every other test shares.
    stack = await fresh_stack()
    admin_operations = [operation for operation in all_operations(stack.url) if needs_admin(operation)]
    assert {(operation.method.upper(), operation.path) for operation in admin_operations} == {
        ("PUT", "/api/v2/users/{id}/credit-limit"),
        ("PUT", "/api/v2/products/{sku}"),
    }
    fuzz(stack.url, admin_operations, stack.keys.admin_headers())
