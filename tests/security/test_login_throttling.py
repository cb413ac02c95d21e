"""OWASP API4:2023 (unrestricted resource consumption), applied to sign-in: password guessing
against one account is throttled, per account and client, in the database (so across replicas),
without telling an attacker which emails have accounts, and without letting a stranger's failures
lock the owner out. Against the real app and the real Postgres.

The app is called directly here, so the client is the address in X-Forwarded-For, as the gateway
sets it (shared.http.forwarded_client), or else the test client's own.
"""

import asyncio
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from shared.app_keys import DB_POOL
from tests.integration.conftest import Client, held_to_contract
from users_service.app import create_app
from users_service.config import UsersConfig
from users_service.routes import LOGIN_THROTTLE
from users_service.services import PURGE_BATCH_SIZE, purge_ended_login_windows

ADA = {"email": "ada@example.com", "name": "Ada", "password": "correct-horse"}
MAX_FAILURES = UsersConfig().login_max_failures  # the default, which users_client runs with
WINDOW_SECONDS = UsersConfig().login_lockout_seconds


async def register(client: Client, email: str = ADA["email"]) -> None:
    response = await client.post("/api/v2/users", json={**ADA, "email": email})
    assert response.status == 201, await response.text()


async def sign_in(
    client: Client,
    password: str,
    email: str = ADA["email"],
    *,
    source: str | None = None,
    prefix: str = "/api/v2",
) -> aiohttp.ClientResponse:
    headers = {"X-Forwarded-For": source} if source else {}
    return await client.post(
        f"{prefix}/auth/token", json={"email": email, "password": password}, headers=headers
    )


async def fail(
    client: Client, times: int, email: str = ADA["email"], *, source: str | None = None
) -> list[int]:
    return [(await sign_in(client, "wrong-password", email, source=source)).status for _ in range(times)]


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


async def test_api4_both_api_versions_count_against_one_allowance(users_client: Client) -> None:
    # Version 1's sign-in is deprecated, not a second allowance: guesses alternating between the
    # versions are throttled at the same count as guesses through one.
    await register(users_client)
    statuses = [
        (await sign_in(users_client, "wrong-password", prefix=("/api", "/api/v2")[n % 2])).status
        for n in range(MAX_FAILURES + 2)
    ]
    assert statuses == [401] * MAX_FAILURES + [429] * 2
    for prefix in ("/api", "/api/v2"):
        await assert_throttled(await sign_in(users_client, ADA["password"], prefix=prefix))


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
    assert await users_client.app[DB_POOL].fetchval("SELECT count(*) FROM sign_in_attempts") == 0


async def test_api4_the_lockout_ends_when_the_window_passes(users_client: Client) -> None:
    await register(users_client)
    await fail(users_client, MAX_FAILURES)
    await assert_throttled(await sign_in(users_client, ADA["password"]))
    # Let the window pass, as the clock would: move its start back rather than wait 15 minutes.
    await users_client.app[DB_POOL].execute(
        "UPDATE sign_in_attempts SET window_started_at = window_started_at - $1::int * interval '1 second'",
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


async def test_api4_a_strangers_failures_do_not_lock_the_owner_out(users_client: Client) -> None:
    await register(users_client)
    stranger, owner = "203.0.113.66", "198.51.100.7"
    assert await fail(users_client, MAX_FAILURES + 1, source=stranger) == [401] * MAX_FAILURES + [429]
    await assert_throttled(await sign_in(users_client, ADA["password"], source=stranger))
    # The owner, from their own address, signs in as ever, and the stranger stays throttled.
    assert (await sign_in(users_client, ADA["password"], source=owner)).status == 200
    await assert_throttled(await sign_in(users_client, ADA["password"], source=stranger))


async def test_api4_an_ipv6_client_is_throttled_by_its_64_not_by_each_address(users_client: Client) -> None:
    await register(users_client)
    # One host may use any address of its /64: rotating through them buys no more guesses.
    statuses = [
        (await sign_in(users_client, "wrong-password", source=f"2001:db8:1:2::{n:x}")).status
        for n in range(1, MAX_FAILURES + 3)
    ]
    assert statuses == [401] * MAX_FAILURES + [429] * 2
    assert (await sign_in(users_client, ADA["password"], source="2001:db8:1:3::1")).status == 200


async def test_ended_windows_are_purged_in_batches_and_live_ones_kept(users_client: Client) -> None:
    pool = users_client.app[DB_POOL]
    throttle = users_client.app[LOGIN_THROTTLE]
    ended = 2 * PURGE_BATCH_SIZE + 7  # more than one batch
    await pool.execute(
        """
        INSERT INTO sign_in_attempts (email, client, attempts, window_started_at)
        SELECT 'old-' || n || '@example.com', '203.0.113.1', 6, now() - $2::int * interval '1 second'
        FROM generate_series(1, $1) AS n
        """,
        ended,
        throttle.window_seconds + 1,
    )
    await fail(users_client, 2, "live@example.com")
    assert await purge_ended_login_windows(pool, throttle) == ended
    assert await pool.fetch("SELECT email, attempts FROM sign_in_attempts") == [("live@example.com", 2)]
    assert await purge_ended_login_windows(pool, throttle) == 0


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
