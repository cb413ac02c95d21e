"""What the admin role allows in users_service, in-process, against a real database and broker: an
admin sets a user's credit limit (announced as users.credit.limit_changed, never below the credit in
use) and reads any user; nobody else does either. The roles come from the token's `roles` claim,
which must be a list of strings.
"""

import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import orjson
import pytest

from devstack.rabbitmq import Vhost
from devstack.waiting import eventually
from shared.app_keys import DB_POOL
from shared.envelope import Cause, Envelope
from shared.events import CreditLimitChanged, OrderCreated
from tests.conftest import AUDIENCE, ISSUER
from tests.integration.conftest import Client, set_credit_limit
from tests.support import publish_raw
from users_service.tokens import TokenIssuer

TokenFor = Callable[[uuid.UUID], dict[str, str]]
AdminHeaders = dict[str, str]
POLICY_CREDIT_LIMIT_CENTS = 100_000  # NEW_USER_CREDIT_LIMIT_CENTS's default


async def register(client: Client, email: str = "ada@example.com") -> dict[str, Any]:
    response = await client.post(
        "/api/v2/users", json={"email": email, "name": "Ada", "password": "correct-horse"}
    )
    assert response.status == 201, await response.text()
    user: dict[str, Any] = await response.json()
    return user


async def announced(client: Client) -> list[dict[str, Any]]:
    """The users.credit.limit_changed envelopes in users_service's outbox, oldest first."""
    rows = await client.app[DB_POOL].fetch(
        "SELECT body FROM outbox WHERE event_type = $1 ORDER BY id", CreditLimitChanged.TYPE
    )
    return [orjson.loads(row["body"]) for row in rows]


async def stored_limit(client: Client, user_id: str) -> int:
    limit: int = await client.app[DB_POOL].fetchval(
        "SELECT credit_limit_cents FROM users WHERE id = $1", uuid.UUID(user_id)
    )
    return limit


# --- credit limits -------------------------------------------------------------------------------


async def test_an_admin_sets_a_credit_limit_and_the_change_is_announced(
    users_client: Client, admin_headers: AdminHeaders
) -> None:
    user = await register(users_client)
    headers = {**admin_headers, "X-Request-ID": "raise-adas-limit"}
    response = await users_client.put(
        f"/api/v2/users/{user['id']}/credit-limit", json={"credit_limit_cents": 250_000}, headers=headers
    )
    assert response.status == 200, await response.text()
    assert await response.json() == {**user, "credit_limit_cents": 250_000}
    assert await stored_limit(users_client, user["id"]) == 250_000

    [envelope] = await announced(users_client)
    assert (envelope["type"], envelope["dataversion"], envelope["source"]) == (
        CreditLimitChanged.TYPE,
        1,
        "users_service",
    )
    assert envelope["correlationid"] == "raise-adas-limit"  # told in the story of the request
    assert envelope["data"] == {
        "user_id": user["id"],
        "credit_limit_cents": 250_000,
        "previous_credit_limit_cents": POLICY_CREDIT_LIMIT_CENTS,
    }

    # And it is published: the broker lets users_service publish this event type.
    async def published() -> bool:
        count: int = await users_client.app[DB_POOL].fetchval(
            "SELECT count(*) FROM outbox WHERE event_type = $1 AND published_at IS NOT NULL",
            CreditLimitChanged.TYPE,
        )
        return count == 1

    await eventually(published, what="users.credit.limit_changed published")


async def test_setting_the_limit_a_user_has_changes_nothing_and_announces_nothing(
    users_client: Client, admin_headers: AdminHeaders
) -> None:
    user = await register(users_client)
    same = await set_credit_limit(users_client, admin_headers, user["id"], POLICY_CREDIT_LIMIT_CENTS)
    assert same == user
    assert await announced(users_client) == []
    await set_credit_limit(users_client, admin_headers, user["id"], 5000)
    await set_credit_limit(users_client, admin_headers, user["id"], 5000)  # a PUT repeated
    assert [envelope["data"]["credit_limit_cents"] for envelope in await announced(users_client)] == [5000]


async def test_a_limit_below_the_credit_in_use_is_422(
    users_client: Client, admin_headers: AdminHeaders, broker: Vhost
) -> None:
    user = await register(users_client)
    # Credit comes into use as the saga has it: users_service reserves it for an order placed.
    created = OrderCreated(uuid.uuid4(), uuid.UUID(user["id"]), 3000)
    envelope = Envelope.wrap(created, source="orders_service", cause=Cause("in-use", "in-use"))
    await publish_raw(broker, envelope.to_json(), OrderCreated.TYPE)

    async def in_use() -> bool:
        used: int = await users_client.app[DB_POOL].fetchval(
            "SELECT credit_used_cents FROM users WHERE id = $1", uuid.UUID(user["id"])
        )
        return used == 3000

    await eventually(in_use, what="3000 cents of credit reserved")
    response = await users_client.put(
        f"/api/v2/users/{user['id']}/credit-limit", json={"credit_limit_cents": 2999}, headers=admin_headers
    )
    assert response.status == 422
    [error] = (await response.json())["errors"]
    assert error["pointer"] == "#/credit_limit_cents"
    assert "3000" in error["detail"]
    assert await stored_limit(users_client, user["id"]) == POLICY_CREDIT_LIMIT_CENTS
    assert await announced(users_client) == []
    # Down to exactly the credit in use is allowed.
    assert (await set_credit_limit(users_client, admin_headers, user["id"], 3000))[
        "credit_used_cents"
    ] == 3000


@pytest.mark.parametrize("user_id", [str(uuid.uuid4()), "not-a-uuid"])
async def test_the_limit_of_an_unknown_user_is_404(
    users_client: Client, admin_headers: AdminHeaders, user_id: str
) -> None:
    response = await users_client.put(
        f"/api/v2/users/{user_id}/credit-limit", json={"credit_limit_cents": 5000}, headers=admin_headers
    )
    assert response.status == 404
    assert response.content_type == "application/problem+json"


@pytest.mark.parametrize("limit", [-1, 10_000_001, "5000", None])
async def test_a_limit_out_of_bounds_is_422(
    users_client: Client, admin_headers: AdminHeaders, limit: object
) -> None:
    user = await register(users_client)
    response = await users_client.put(
        f"/api/v2/users/{user['id']}/credit-limit", json={"credit_limit_cents": limit}, headers=admin_headers
    )
    assert response.status == 422
    assert [entry["pointer"] for entry in (await response.json())["errors"]] == ["#/credit_limit_cents"]
    assert await stored_limit(users_client, user["id"]) == POLICY_CREDIT_LIMIT_CENTS


async def test_only_an_admin_sets_a_credit_limit(users_client: Client, token_for: TokenFor) -> None:
    user = await register(users_client)
    path = f"/api/v2/users/{user['id']}/credit-limit"
    body = {"credit_limit_cents": 10_000_000}
    assert (await users_client.put(path, json=body)).status == 401
    # Not even one's own: a user signed in without the role is refused, before the body is read.
    for headers in (token_for(uuid.UUID(user["id"])), token_for(uuid.uuid4())):
        response = await users_client.put(path, json=body, headers=headers)
        assert response.status == 403
        problem = await response.json()
        assert problem["type"] == "urn:eda-reference:problem:forbidden"
        assert "admin" in problem["detail"]
    assert await stored_limit(users_client, user["id"]) == POLICY_CREDIT_LIMIT_CENTS
    assert await announced(users_client) == []


# --- reading users ----------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["/api", "/api/v2"])
async def test_an_admin_reads_any_user_and_anyone_else_only_themselves(
    users_client: Client, token_for: TokenFor, admin_headers: AdminHeaders, api: str
) -> None:
    ada = await register(users_client)
    bob = await register(users_client, "bob@example.com")
    for user in (ada, bob):
        response = await users_client.get(f"{api}/users/{user['id']}", headers=admin_headers)
        assert response.status == 200
        assert await response.json() == user
    as_ada = token_for(uuid.UUID(ada["id"]))
    assert (await users_client.get(f"{api}/users/{ada['id']}", headers=as_ada)).status == 200
    # Another user's id answers as an id nobody has: it must not tell that the user exists.
    someone_else = await users_client.get(f"{api}/users/{bob['id']}", headers=as_ada)
    nobody = await users_client.get(f"{api}/users/{uuid.uuid4()}", headers=as_ada)
    assert someone_else.status == nobody.status == 404
    assert await someone_else.json() == await nobody.json()
    # An admin asking for an id nobody has gets the same answer.
    assert (await users_client.get(f"{api}/users/{uuid.uuid4()}", headers=admin_headers)).status == 404


# --- the roles claim ---------------------------------------------------------------------------


def token_with_roles(issuer: TokenIssuer, user_id: uuid.UUID, **roles: object) -> str:
    """A token signed as users_service signs them, with `roles=...` as its roles claim (or none)."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(user_id), "iat": now, "nbf": now, "exp": now + 60}
    headers = {"typ": "at+jwt", "kid": issuer.key_id}
    return jwt.encode(claims | roles, issuer.private_key, algorithm="EdDSA", headers=headers)


@pytest.mark.parametrize(
    "roles",
    ["admin", ["admin", 1], [["admin"]], {"admin": True}, None, 1],
    ids=["a string", "a list with a number", "a nested list", "an object", "null", "a number"],
)
async def test_a_token_whose_roles_claim_is_not_a_list_of_strings_is_401(
    users_client: Client, issuer: TokenIssuer, roles: object
) -> None:
    user = await register(users_client)
    token = token_with_roles(issuer, uuid.UUID(user["id"]), roles=roles)
    headers = {"Authorization": f"Bearer {token}"}
    for method, path, body in (
        ("GET", "/api/v2/users/me", None),
        ("PUT", f"/api/v2/users/{user['id']}/credit-limit", {"credit_limit_cents": 10_000_000}),
    ):
        response = await users_client.request(method, path, json=body, headers=headers)
        assert response.status == 401, (method, path)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert await stored_limit(users_client, user["id"]) == POLICY_CREDIT_LIMIT_CENTS


async def test_a_token_without_a_roles_claim_grants_no_role(
    users_client: Client, issuer: TokenIssuer
) -> None:
    user = await register(users_client)
    headers = {"Authorization": f"Bearer {token_with_roles(issuer, uuid.UUID(user['id']))}"}
    assert (await users_client.get("/api/v2/users/me", headers=headers)).status == 200
    response = await users_client.put(
        f"/api/v2/users/{user['id']}/credit-limit", json={"credit_limit_cents": 10_000_000}, headers=headers
    )
    assert response.status == 403
    admin = token_with_roles(issuer, uuid.uuid4(), roles=["admin"])  # made alike, granting the role
    granted = await users_client.put(
        f"/api/v2/users/{user['id']}/credit-limit",
        json={"credit_limit_cents": 10_000_000},
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert granted.status == 200
