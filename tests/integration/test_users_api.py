"""users_service's API (version 2), in-process, against a real database; and what version 1 still
accepts at registration, and ignores.

Credit limits an admin sets, and who may read whom, are in test_roles.py.
"""

import dataclasses
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from pytest_aiohttp import AiohttpClient

from devstack.keys import KeyPair
from shared.app_keys import DB_POOL
from tests.integration.conftest import Client, held_to_contract
from users_service.app import create_app
from users_service.config import UsersConfig
from users_service.tokens import TokenIssuer

ADA = {"email": "Ada@Example.com", "name": "Ada Lovelace", "password": "correct-horse"}
POLICY_CREDIT_LIMIT_CENTS = 100_000  # NEW_USER_CREDIT_LIMIT_CENTS's default


async def register(client: Client, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/api/v2/users", json={**ADA, **overrides})
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    assert response.headers["Location"] == f"/api/v2/users/{body['id']}"
    return body


async def sign_in(client: Client, email: str = "ada@example.com", password: str = "correct-horse") -> str:
    response = await client.post("/api/v2/auth/token", json={"email": email, "password": password})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert response.headers["Cache-Control"] == "no-store"
    token: str = body["access_token"]
    return token


async def test_register_returns_the_user_without_secrets(users_client: Client) -> None:
    user = await register(users_client)
    assert set(user) == {"id", "email", "name", "credit_limit_cents", "credit_used_cents", "created_at"}
    assert user["email"] == "ada@example.com"  # normalised
    assert (user["credit_limit_cents"], user["credit_used_cents"]) == (POLICY_CREDIT_LIMIT_CENTS, 0)
    assert user["created_at"].endswith("Z")


async def test_a_new_user_gets_the_limit_the_policy_sets(
    users_config: UsersConfig, contract_violations: list[str], aiohttp_client: AiohttpClient
) -> None:
    assert users_config.new_user_credit_limit_cents == POLICY_CREDIT_LIMIT_CENTS
    stricter = dataclasses.replace(users_config, new_user_credit_limit_cents=2500)
    client = await aiohttp_client(held_to_contract(create_app(stricter), contract_violations))
    assert (await register(client))["credit_limit_cents"] == 2500


@pytest.mark.parametrize("asked", [0, 5000, 10_000_000])
async def test_version_1_may_still_send_a_credit_limit_which_is_ignored(
    users_client: Client, asked: int
) -> None:
    response = await users_client.post("/api/users", json={**ADA, "credit_limit_cents": asked})
    assert response.status == 201, await response.text()
    user = await response.json()
    assert response.headers["Location"] == f"/api/users/{user['id']}"
    assert user["credit_limit_cents"] == POLICY_CREDIT_LIMIT_CENTS
    stored = await users_client.app[DB_POOL].fetchval("SELECT credit_limit_cents FROM users")
    assert stored == POLICY_CREDIT_LIMIT_CENTS
    # And so the registration announces it.
    announced = await users_client.app[DB_POOL].fetchval(
        "SELECT body FROM outbox WHERE event_type = 'users.user.registered'"
    )
    assert orjson.loads(announced)["data"]["credit_limit_cents"] == POLICY_CREDIT_LIMIT_CENTS


async def test_version_2_refuses_a_credit_limit_at_registration(users_client: Client) -> None:
    response = await users_client.post("/api/v2/users", json={**ADA, "credit_limit_cents": 5000})
    assert response.status == 422
    assert (await response.json())["errors"] == [
        {"pointer": "#/credit_limit_cents", "detail": "is not an accepted field"}
    ]
    assert await users_client.app[DB_POOL].fetchval("SELECT count(*) FROM users") == 0


async def test_an_email_can_register_once_whatever_its_case(users_client: Client) -> None:
    await register(users_client)
    response = await users_client.post("/api/v2/users", json={**ADA, "email": "ADA@example.COM"})
    assert response.status == 409
    assert response.content_type == "application/problem+json"
    assert (await response.json())["type"] == "urn:eda-reference:problem:email-taken"


async def test_passwords_are_stored_as_argon2id_hashes(users_client: Client) -> None:
    await register(users_client)
    stored = await users_client.app[DB_POOL].fetchval("SELECT password_hash FROM users")
    assert stored.startswith("$argon2id$")
    assert "correct-horse" not in stored


async def test_sign_in_and_read_yourself(users_client: Client) -> None:
    user = await register(users_client)
    headers = {"Authorization": f"Bearer {await sign_in(users_client)}"}
    me = await users_client.get("/api/v2/users/me", headers=headers)
    assert me.status == 200
    assert await me.json() == user
    by_id = await users_client.get(f"/api/v2/users/{user['id']}", headers=headers)
    assert await by_id.json() == user


async def test_unknown_email_and_wrong_password_get_the_same_answer(users_client: Client) -> None:
    await register(users_client)
    wrong_password = await users_client.post(
        "/api/v2/auth/token", json={"email": "ada@example.com", "password": "wrong-password"}
    )
    unknown_email = await users_client.post(
        "/api/v2/auth/token", json={"email": "nobody@example.com", "password": "correct-horse"}
    )
    assert wrong_password.status == unknown_email.status == 401
    assert await wrong_password.json() == await unknown_email.json()


async def test_another_users_id_answers_404(
    users_client: Client, token_for: Callable[[uuid.UUID], dict[str, str]]
) -> None:
    ada = await register(users_client)
    bob = await register(users_client, email="bob@example.com")
    response = await users_client.get(f"/api/v2/users/{bob['id']}", headers=token_for(uuid.UUID(ada["id"])))
    assert response.status == 404
    not_a_uuid = await users_client.get("/api/v2/users/123", headers=token_for(uuid.UUID(ada["id"])))
    assert not_a_uuid.status == 404


async def test_reading_users_needs_a_valid_token(users_client: Client, key_pair: KeyPair) -> None:
    user = await register(users_client)
    expired = TokenIssuer.from_pem_file(
        key_pair.private, issuer="eda-reference/users", audience="eda-reference", ttl_seconds=-120
    ).issue(uuid.UUID(user["id"]))
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": f"Bearer {expired}"}):
        response = await users_client.get("/api/v2/users/me", headers=headers)
        assert response.status == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.content_type == "application/problem+json"


async def test_a_token_for_a_deleted_user_answers_404(
    users_client: Client, token_for: Callable[[uuid.UUID], dict[str, str]]
) -> None:
    response = await users_client.get("/api/v2/users/me", headers=token_for(uuid.uuid4()))
    assert response.status == 404


async def test_invalid_registrations_store_nothing(users_client: Client) -> None:
    cases: list[tuple[dict[str, Any] | bytes, dict[str, str], int]] = [
        (b"{not json", {"Content-Type": "application/json"}, 400),
        (b"email=a@b.c", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({**ADA, "password": "short"}, {}, 422),
        ({**ADA, "credit_limit_cents": 5000}, {}, 422),
        ({**ADA, "credit_used_cents": 0}, {}, 422),
        (b'{"email": "' + b"a" * 70_000 + b'"}', {"Content-Type": "application/json"}, 413),
    ]
    for body, headers, status in cases:
        if isinstance(body, bytes):
            response = await users_client.post("/api/v2/users", data=body, headers=headers)
        else:
            response = await users_client.post("/api/v2/users", json=body)
        assert response.status == status, await response.text()
        assert response.content_type == "application/problem+json"
    assert await users_client.app[DB_POOL].fetchval("SELECT count(*) FROM users") == 0


async def test_validation_failures_list_every_bad_field(users_client: Client) -> None:
    response = await users_client.post("/api/v2/users", json={"email": "no-at-sign", "password": "x"})
    assert response.status == 422
    problem = await response.json()
    assert problem["title"] == "Validation failed"
    assert [entry["pointer"] for entry in problem["errors"]] == ["#/email", "#/name", "#/password"]


async def test_readiness_reports_each_dependency(users_client: Client) -> None:
    response = await users_client.get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "checks": {"postgres": "ok", "rabbitmq": "ok"}}
    assert (await users_client.get("/healthz")).status == 200
