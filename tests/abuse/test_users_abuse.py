"""The abuse table, users_service side (issue 14): bursts of password hashes, and sign-in throttling
turned against the account's owner. Against the real processes, through the gateway, which trusts
the test as a proxy in front of it, so that each request can come from the client address it names
(X-Forwarded-For), as from many machines at once."""

import asyncio
import re
import uuid

import aiohttp
import asyncpg
import pytest

from devstack.waiting import eventually
from tests.abuse.clients import BYSTANDER_DEADLINE, assert_bystander_served, peak_rss_mib
from tests.e2e.api import PASSWORD, new_user
from tests.e2e.conftest import StackFactory
from tests.e2e.saga_checker import assert_invariants_once_quiet

pytestmark = pytest.mark.e2e

BEHIND_A_PROXY = {"TRUSTED_PROXIES": "127.0.0.1/32"}
BURST = 200
HASH_CONCURRENCY = 2


def from_address(n: int) -> dict[str, str]:
    """The n-th of many client addresses (198.18.0.0/15 is set aside for tests like this one)."""
    return {"X-Forwarded-For": f"198.18.{n // 250}.{n % 250 + 1}"}


async def hashes_running(http: aiohttp.ClientSession, users_url: str) -> int:
    async with http.get(f"{users_url}/metrics") as response:
        exposition = await response.text()
    found = re.search(r"^password_hashes_running (\S+)$", exposition, re.MULTILINE)
    assert found is not None, exposition
    return int(float(found.group(1)))


async def test_a_burst_of_sign_ups_stays_within_the_memory_set_for_it(
    fresh_stack: StackFactory, http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before: every hash (64 MiB) went to Python's default thread pool, CPUs + 4 threads at once
    # with a queue without bound behind them: 200 sign-ups took users_service from 130 MiB to a peak
    # of 454 MiB on a 2-CPU machine (~2.3 GiB on 32 CPUs), and the last answered after 37 s.
    stack = await fresh_stack(
        gateway=BEHIND_A_PROXY,
        users_service={
            "PASSWORD_HASH_CONCURRENCY": str(HASH_CONCURRENCY),
            "PASSWORD_HASH_QUEUE_TIMEOUT": "0.5",
        },
    )
    bystander = await new_user(http, stack.url)
    users_pid = stack.users.pid
    assert users_pid is not None
    before_mib = peak_rss_mib(users_pid)

    async def sign_up(n: int) -> tuple[int, str | None, str]:
        body = {"email": f"burst-{n}-{uuid.uuid4().hex[:6]}@example.com", "name": "B", "password": PASSWORD}
        async with http.post(f"{stack.url}/api/v2/users", json=body, headers=from_address(n)) as response:
            return response.status, response.headers.get("Retry-After"), await response.text()

    burst = asyncio.ensure_future(asyncio.gather(*(sign_up(n) for n in range(BURST))))
    most_at_once = 0
    while not burst.done():
        most_at_once = max(most_at_once, await hashes_running(http, stack.users.url))
        await asyncio.wait([burst], timeout=0.02)
    answers = burst.result()
    peak_mib = peak_rss_mib(users_pid)
    statuses = [status for status, _, _ in answers]
    with capsys.disabled():  # the measurement belongs in the suite's output, not only on failure
        print(
            f"\nusers_service under {BURST} concurrent sign-ups, "
            f"PASSWORD_HASH_CONCURRENCY={HASH_CONCURRENCY}: peak RSS {peak_mib:.0f} MiB "
            f"(before the burst {before_mib:.0f} MiB); most hashes seen running at once {most_at_once}; "
            f"{statuses.count(201)} registered, {statuses.count(503)} told to retry (503)"
        )
    assert most_at_once <= HASH_CONCURRENCY
    assert set(statuses) <= {201, 503}
    for status, retry_after, text in answers:
        if status == 503:  # refused at once, with when to come back: not queued, not a failure
            assert retry_after is not None
            assert int(retry_after) >= 1
            assert "urn:eda-reference:problem:busy" in text
    # The refusals are the service saying "not now", not failing: the gateway's circuit to it stays
    # closed, and the bystander signs in and orders as ever.
    async with http.post(
        f"{stack.url}/api/v2/auth/token", json={"email": bystander.email, "password": PASSWORD}
    ) as response:
        assert response.status == 200, await response.text()
    async with http.get(f"{stack.url}/api/v2/users/me", headers=bystander.headers) as response:
        assert response.status == 200
    await assert_bystander_served(http, stack.url, bystander)
    await assert_invariants_once_quiet(stack)


async def test_a_strangers_failed_sign_ins_cannot_lock_the_owner_out(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: sign-ins were throttled per account only, so six wrong passwords from anyone locked the
    # owner out for 15 minutes (429 with the right password, from any address).
    stack = await fresh_stack(gateway=BEHIND_A_PROXY)
    owner = await new_user(http, stack.url)

    async def sign_in(password: str, address: str) -> int:
        credentials = {"email": owner.email, "password": password}
        headers = {"X-Forwarded-For": address}
        async with http.post(f"{stack.url}/api/v2/auth/token", json=credentials, headers=headers) as response:
            return response.status

    assert [await sign_in("wrong-password", "203.0.113.66") for _ in range(6)] == [401] * 5 + [429]
    # Every other address of the stranger's /64 counts as the same client.
    assert await sign_in(PASSWORD, "203.0.113.66") == 429
    assert [await sign_in("wrong-password", f"2001:db8:66::{n}") for n in range(1, 8)] == [401] * 5 + [
        429
    ] * 2
    # The owner, from where they are, signs in and orders as ever.
    assert await sign_in(PASSWORD, "198.51.100.7") == 200
    await assert_bystander_served(http, stack.url, owner)


async def test_sign_in_counts_are_purged_once_their_window_has_ended(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: a row per email that ever failed a sign-in, kept forever; a guesser cycling through
    # made-up emails grew the table without end.
    window = 5
    stack = await fresh_stack(
        gateway=BEHIND_A_PROXY,
        users_service={"LOGIN_LOCKOUT_SECONDS": str(window), "LOGIN_ATTEMPTS_PURGE_SECONDS": "0.5"},
    )
    bystander = await new_user(http, stack.url)
    guesses = [{"email": f"made-up-{n}@example.com", "password": "guess-1234"} for n in range(10)]
    for n, guess in enumerate(guesses):
        async with http.post(
            f"{stack.url}/api/v2/auth/token", json=guess, headers=from_address(n)
        ) as response:
            assert response.status == 401
    connection = await asyncpg.connect(stack.admin_dsn("users_service"))
    try:
        # The last guess's window is still open: its count is kept.
        assert (
            await connection.fetchval(
                "SELECT attempts FROM sign_in_attempts WHERE email = $1", guesses[-1]["email"]
            )
            == 1
        )

        async def purged() -> bool:
            return bool(await connection.fetchval("SELECT count(*) FROM sign_in_attempts") == 0)

        await eventually(purged, within=window + BYSTANDER_DEADLINE, what="the ended windows purged")
    finally:
        await connection.close()
    await assert_bystander_served(http, stack.url, bystander)
