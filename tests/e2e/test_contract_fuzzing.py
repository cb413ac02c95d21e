"""Contract fuzzing: schemathesis generates requests from the gateway's own /openapi.json and checks
every answer against it (no 5xx, documented status, content type, headers and body). Bounded (a
few examples per operation) so the suite stays fast; signed in, so that the secured operations are
reached, not just refused.

Driven through schemathesis' Python API rather than its pytest plugin, whose lazy fixture loading
does not work with the pytest this project pins.
"""

import uuid
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.result import Ok

from tests.e2e.api import PASSWORD
from tests.e2e.conftest import Stack

EXAMPLES_PER_OPERATION = 8


@pytest.fixture(scope="session")
def signed_in(stack: Stack) -> dict[str, str]:
    email = f"fuzz-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "name": "Fuzz", "password": PASSWORD}
    assert requests.post(f"{stack.url}/api/users", json=body, timeout=10).status_code == 201
    answer = requests.post(
        f"{stack.url}/api/auth/token", json={"email": email, "password": PASSWORD}, timeout=10
    )
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def test_the_gateway_keeps_its_contract(stack: Stack, signed_in: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = []
    for loaded in schema.get_all_operations():
        assert isinstance(loaded, Ok), loaded  # an operation schemathesis cannot read is a contract bug
        operations.append(loaded.ok())
    assert len(operations) == 11  # every public operation is fuzzed, health checks and metrics included

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
            # issued, and that request is rightly refused (422), so "valid data is accepted"
            # cannot hold for it. Every other check still applies.
            opaque = [positive_data_acceptance] if case.query and "cursor" in case.query else []
            case.call_and_validate(base_url=stack.url, headers=signed_in, excluded_checks=opaque)

        keeps_the_contract()
