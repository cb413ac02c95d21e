"""OWASP API4:2023 (unrestricted resource consumption), applied to sign-in: password guessing
against one account is throttled, per account, in the database (so across replicas), without
telling an attacker which emails have accounts. Against the real app and the real Postgres.
"""

import asyncio
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from shared.service import DB_POOL
from tests.integration.conftest import Client, held_to_contract
from users_service.app import create_app
from users_service.config import UsersConfig

ADA = {"email": "ada@example.com", "name": "Ada", "password": "correct-horse"}
MAX_FAILURES = UsersConfig().login_max_failures  # the default, which users_client runs with
WINDOW_SECONDS = UsersConfig().login_lockout_seconds


async def register(client: Client, email: str = ADA["email"]) -> None:
    response = await client.post("/api/users", json={**ADA, "email": email})
    assert response.status == 201, await response.text()


async def sign_in(client: Client, password: str, email: str = ADA["email"]) -> aiohttp.ClientResponse:
    return await client.post("/api/auth/token", json={"email": email, "password": password})


async def fail(client: Client, times: int, email: str = ADA["email"]) -> list[int]:
    return [(await sign_in(client, "wrong-password", email)).status for _ in range(times)]


async def assert_throttled(response: aiohttp.ClientResponse) -> dict[str, Any]:
    assert response.status == 429, await response.text()
    assert response.content_type == "application/problem+json"
    assert 1 <= int(response.headers["Retry-After"]) <= WINDOW_SECONDS
    problem: dict[str, Any] = await response.json()
    assert problem["status"] == 429
    assert "access_token" not in problem
    return problem


async def test_api4_login_is_throttled_per_account(users_client: Client) -> None:
    await register(users_client)
    await register(users_client, "bob@example.com")
    assert await fail(users_client, MAX_FAILURES - 1) == [401] * (MAX_FAILURES - 1)
    assert await fail(users_client, 1, "ADA@Example.com") == [401]  # the same account, whatever the case
    await assert_throttled(await sign_in(users_client, "wrong-password"))
    # The right password too: an attacker who guessed it cannot tell.
    await assert_throttled(await sign_in(users_client, ADA["password"]))
    # Another account is not affected.
    assert (await sign_in(users_client, ADA["password"], "bob@example.com")).status == 200


async def test_api4_unknown_emails_are_throttled_the_same_way(users_client: Client) -> None:
    await register(users_client)
    known = await fail(users_client, MAX_FAILURES + 1)
    unknown = await fail(users_client, MAX_FAILURES + 1, "nobody@example.com")
    assert known == unknown == [401] * MAX_FAILURES + [429]
    problems = [
        await assert_throttled(await sign_in(users_client, "x", email))
        for email in (ADA["email"], "nobody@example.com")
    ]
    assert {problem["type"] for problem in problems} == {"urn:eda-reference:problem:rate-limited"}
    assert problems[0].keys() == problems[1].keys()


async def test_api4_a_successful_sign_in_resets_the_count(users_client: Client) -> None:
    await register(users_client)
    for _ in range(3):
        assert await fail(users_client, MAX_FAILURES - 1) == [401] * (MAX_FAILURES - 1)
        assert (await sign_in(users_client, ADA["password"])).status == 200
    assert await users_client.app[DB_POOL].fetchval("SELECT count(*) FROM login_attempts") == 0


async def test_api4_the_lockout_ends_when_the_window_passes(users_client: Client) -> None:
    await register(users_client)
    await fail(users_client, MAX_FAILURES)
    await assert_throttled(await sign_in(users_client, ADA["password"]))
    # Let the window pass, as the clock would: move its start back rather than wait 15 minutes.
    await users_client.app[DB_POOL].execute(
        "UPDATE login_attempts SET window_started_at = window_started_at - $1::int * interval '1 second'",
        WINDOW_SECONDS,
    )
    assert (await sign_in(users_client, ADA["password"])).status == 200


async def test_api4_concurrent_guesses_cannot_exceed_the_limit(users_client: Client) -> None:
    # Every attempt takes its number atomically before the (slow) password check: a burst of
    # parallel guesses gets no more tries than a patient attacker.
    await register(users_client)
    statuses = await asyncio.gather(*(sign_in(users_client, f"guess-{n}") for n in range(4 * MAX_FAILURES)))
    assert sorted(response.status for response in statuses) == [401] * MAX_FAILURES + [429] * (
        3 * MAX_FAILURES
    )


@pytest.fixture
async def two_replicas(
    users_config: UsersConfig, contract_violations: list[str], aiohttp_client: AiohttpClient
) -> tuple[Client, Client]:
    first = await aiohttp_client(held_to_contract(create_app(users_config), contract_violations))
    second = await aiohttp_client(held_to_contract(create_app(users_config), contract_violations))
    return first, second


async def test_api4_replicas_share_one_count(two_replicas: tuple[Client, Client]) -> None:
    first, second = two_replicas
    await register(first)
    for attempt in range(MAX_FAILURES):
        assert await fail(two_replicas[attempt % 2], 1) == [401]
    await assert_throttled(await sign_in(first, ADA["password"]))
    await assert_throttled(await sign_in(second, ADA["password"]))
