"""OWASP API5:2023 (broken function level authorization), through the gateway, on the real stack.

The operations only an admin may call are the ones whose security requirement names the role in
the public contract (`security: [{bearerAuth: [admin]}]`). Each is tried, aimed at something of the
test's own, by a signed-in user (403, and nothing changes: read back, and no event announces a
change), without a token (401), with an admin's token forged with another key (401), and by an
admin (it changes). No client can get the role through the API: registration takes no role, and
the token a user gets grants none. Which operations this file covers is checked against the
contract, so that an admin operation added later without a row here fails the suite.
"""

import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import jwt
import pytest

from devstack.keys import make_key_pair
from shared.auth import ADMIN, ROLES_CLAIM, TokenVerifier
from shared.config import ServiceConfig
from tests.e2e.api import PASSWORD, POLICY_CREDIT_LIMIT_CENTS, User, me, new_product, new_user
from tests.e2e.conftest import Stack

FORBIDDEN = "urn:eda-reference:problem:forbidden"
Operation = tuple[str, str]  # (method, path template), as the contract names an operation


@dataclasses.dataclass(frozen=True)
class Target:
    """An admin operation aimed at something of the test's own: the request that changes it, how
    to read it back, and what it reads once changed."""

    path: str
    change: dict[str, Any]
    read: Callable[[], Awaitable[Any]]
    changed: Any
    success: int  # the admin's status


TargetMaker = Callable[[aiohttp.ClientSession, Stack], Awaitable[tuple[Target, User]]]


async def a_users_own_credit_limit(http: aiohttp.ClientSession, stack: Stack) -> tuple[Target, User]:
    """The user raises their own limit, the most tempting call of all: the limit and the events
    that announce a change of it are read back."""
    user = await new_user(http, stack.url)
    limit = 10_000_000

    async def read() -> tuple[int, int]:
        announced = await count_events(stack, "users.credit.limit_changed", user.id)
        return (await me(http, stack.url, user))["credit_limit_cents"], announced

    path = f"/api/v2/users/{user.id}/credit-limit"
    return Target(path, {"credit_limit_cents": limit}, read, changed=(limit, 1), success=200), user


async def a_product_on_sale(http: aiohttp.ClientSession, stack: Stack) -> tuple[Target, User]:
    """A user gives themselves a product for nothing."""
    sku = await new_product(http, stack.url, stack.keys.admin_headers(), 45_000)
    change = {"name": "Free for me", "price_cents": 0, "active": True}
    target = Target(f"/api/v2/products/{sku}", change, product_reader(http, stack, sku), (200, change), 200)
    return target, await new_user(http, stack.url)


async def a_product_not_yet_made(http: aiohttp.ClientSession, stack: Stack) -> tuple[Target, User]:
    """A user puts a product of their own making in the catalogue."""
    sku = f"MINE-{uuid.uuid4().hex[:8].upper()}"
    change = {"name": "My own product", "price_cents": 1, "active": True}
    target = Target(f"/api/v2/products/{sku}", change, product_reader(http, stack, sku), (200, change), 201)
    return target, await new_user(http, stack.url)


def product_reader(http: aiohttp.ClientSession, stack: Stack, sku: str) -> Callable[[], Awaitable[Any]]:
    async def read() -> tuple[int, dict[str, Any] | None]:
        async with http.get(f"{stack.url}/api/v2/products/{sku}") as response:
            if response.status == 404:
                return 404, None
            assert response.status == 200, await response.text()
            product = await response.json()
        return 200, {name: product[name] for name in ("name", "price_cents", "active")}

    return read


async def count_events(stack: Stack, event_type: str, user_id: str) -> int:
    """How many events of `event_type` about the user users_service has written (its outbox)."""
    connection = await asyncpg.connect(stack.admin_dsn("users_service"))
    try:
        found: int = await connection.fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = $1 AND body::jsonb -> 'data' ->> 'user_id' = $2",
            event_type,
            user_id,
        )
        return found
    finally:
        await connection.close()


# Every admin operation, and what each is tried on.
ADMIN_OPERATIONS: dict[Operation, list[TargetMaker]] = {
    ("PUT", "/api/v2/users/{id}/credit-limit"): [a_users_own_credit_limit],
    ("PUT", "/api/v2/products/{sku}"): [a_product_on_sale, a_product_not_yet_made],
}
TRIED = [
    pytest.param(method, maker, id=f"{method} {path} on {maker.__name__}")
    for (method, path), makers in ADMIN_OPERATIONS.items()
    for maker in makers
]


async def test_api5_every_operation_the_contract_reserves_for_admins_is_tried_here(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.url}/openapi.json") as response:
        contract = await response.json()
    reserved = {
        (method.upper(), path)
        for path, item in contract["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict)
        for requirement in operation.get("security", contract.get("security", []))
        for roles in requirement.values()
        if ADMIN in roles
    }
    assert reserved == set(ADMIN_OPERATIONS)
    # And each is documented as refusing the others: 401 without a token, 403 without the role.
    for method, path in reserved:
        assert {"401", "403"} <= set(contract["paths"][path][method.lower()]["responses"]), (method, path)


@pytest.mark.parametrize(("method", "maker"), TRIED)
async def test_api5_only_an_admin_may_call_an_admin_operation(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Path, method: str, maker: TargetMaker
) -> None:
    target, user = await maker(http, stack)
    url = f"{stack.url}{target.path}"
    before = await target.read()
    assert before != target.changed

    async with http.request(method, url, json=target.change, headers=user.headers) as response:
        assert response.status == 403, await response.text()
        assert response.content_type == "application/problem+json"
        problem = await response.json()
    assert (problem["type"], problem["status"]) == (FORBIDDEN, 403)
    assert await target.read() == before

    # An admin's token of a key not the stack's: the claim of a role is worth its signature.
    forged = make_key_pair(tmp_path).token(uuid.UUID(user.id), [ADMIN])
    for refused in ({}, {"Authorization": f"Bearer {forged}"}):
        async with http.request(method, url, json=target.change, headers=refused) as response:
            assert response.status == 401, await response.text()
            assert response.content_type == "application/problem+json"
    assert await target.read() == before

    async with http.request(method, url, json=target.change, headers=stack.keys.admin_headers()) as response:
        assert response.status == target.success, await response.text()
    assert await target.read() == target.changed


async def test_api5_an_admin_reads_any_user_and_a_user_only_themselves(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    user, other = await new_user(http, stack.url), await new_user(http, stack.url)
    async with http.get(
        f"{stack.url}/api/v2/users/{user.id}", headers=stack.keys.admin_headers()
    ) as response:
        assert response.status == 200
        assert (await response.json())["email"] == user.email
    async with http.get(f"{stack.url}/api/v2/users/{user.id}", headers=other.headers) as response:
        assert response.status == 404  # not 403: another user's id must not reveal that it exists


@pytest.mark.parametrize("prefix", ["/api", "/api/v2"])
async def test_api5_no_one_registers_themselves_into_a_role(
    stack: Stack, http: aiohttp.ClientSession, prefix: str
) -> None:
    email = f"climber-{uuid.uuid4().hex[:8]}@example.com"
    climber = {"email": email, "name": "Climber", "password": PASSWORD}
    claims = {"roles": [ADMIN], "role": ADMIN, "admin": True}
    async with http.post(f"{stack.url}{prefix}/users", json={**climber, **claims}) as response:
        assert response.status == 422, await response.text()
        pointers = {entry["pointer"] for entry in (await response.json())["errors"]}
    assert pointers == {"#/roles", "#/role", "#/admin"}
    # Nor at sign-in.
    async with http.post(
        f"{stack.url}{prefix}/auth/token", json={"email": email, "password": PASSWORD, "roles": [ADMIN]}
    ) as response:
        assert response.status == 422
    # Registered as anyone may be, the user's token grants no role at all.
    async with http.post(f"{stack.url}{prefix}/users", json=climber) as response:
        assert response.status == 201, await response.text()
        assert set(await response.json()) == {
            "id",
            "email",
            "name",
            "credit_limit_cents",
            "credit_used_cents",
            "created_at",
        }
    async with http.post(
        f"{stack.url}{prefix}/auth/token", json={"email": email, "password": PASSWORD}
    ) as response:
        assert response.status == 200
        token = (await response.json())["access_token"]
    verifier = TokenVerifier.from_pem_file(
        stack.keys.public, issuer=ServiceConfig.jwt_issuer, audience=ServiceConfig.jwt_audience
    )
    assert verifier.principal(token).roles == frozenset()
    # The claim is there, and empty (its signature checked just above).
    assert jwt.decode(token, options={"verify_signature": False})[ROLES_CLAIM] == []


async def test_api5_a_version_1_client_cannot_choose_its_own_credit_limit(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # Version 1's contract still accepts the field; the limit is the policy's all the same.
    email = f"greedy-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "name": "Greedy", "password": PASSWORD, "credit_limit_cents": 10_000_000}
    async with http.post(f"{stack.url}/api/users", json=body) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["credit_limit_cents"] == POLICY_CREDIT_LIMIT_CENTS
    async with http.post(
        f"{stack.url}/api/auth/token", json={"email": email, "password": PASSWORD}
    ) as response:
        auth = {"Authorization": f"Bearer {(await response.json())['access_token']}"}
    async with http.get(f"{stack.url}/api/v2/users/me", headers=auth) as response:
        assert (await response.json())["credit_limit_cents"] == POLICY_CREDIT_LIMIT_CENTS
