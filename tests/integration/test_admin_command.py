"""`python -m users_service.admin`, the operator's command for the admin role, against users_service's
real database while the service runs on it: a grant shows in the user's next access token (and
gives its powers), a revocation takes it away from the next one, an unknown email changes nothing.

The command runs in this process (`main`, with DATABASE_URL set as an operator would set it), in a
thread of its own: it runs its own event loop, as it does when started from a shell.
"""

import asyncio
import uuid

import pytest

from shared.app_keys import DB_POOL
from shared.auth import ADMIN, Principal, TokenVerifier
from tests.integration.conftest import Client
from users_service import admin
from users_service.config import UsersConfig

PASSWORD = "correct-horse"


@pytest.fixture
def operator_environment(users_config: UsersConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment an operator runs the command in: users_service's DATABASE_URL."""
    monkeypatch.setenv("DATABASE_URL", users_config.database_url.value)
    monkeypatch.setenv("STARTUP_TIMEOUT", "10")


async def run(*arguments: str) -> int:
    return await asyncio.to_thread(admin.main, list(arguments))


async def register(client: Client, email: str) -> str:
    response = await client.post("/api/v2/users", json={"email": email, "name": "Op", "password": PASSWORD})
    assert response.status == 201, await response.text()
    user_id: str = (await response.json())["id"]
    return user_id


async def signed_in(client: Client, email: str) -> str:
    response = await client.post("/api/v2/auth/token", json={"email": email, "password": PASSWORD})
    assert response.status == 200, await response.text()
    token: str = (await response.json())["access_token"]
    return token


async def can_set_credit_limits(client: Client, token: str, user_id: str) -> bool:
    response = await client.put(
        f"/api/v2/users/{user_id}/credit-limit",
        json={"credit_limit_cents": 5000},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status in {200, 403}, await response.text()
    return response.status == 200


@pytest.mark.usefixtures("operator_environment")
async def test_a_grant_shows_in_the_next_token_and_a_revocation_in_the_one_after(
    users_client: Client, verifier: TokenVerifier, capsys: pytest.CaptureFixture[str]
) -> None:
    grace = await register(users_client, "grace@example.com")
    before = await signed_in(users_client, "grace@example.com")
    assert verifier.principal(before).roles == frozenset()

    assert await run("grant", "Grace@Example.com") == 0  # emails are compared without case
    assert "granted admin: grace@example.com" in capsys.readouterr().out
    assert verifier.principal(before).roles == frozenset(), "a token already issued is unchanged"
    granted = await signed_in(users_client, "grace@example.com")
    assert verifier.principal(granted) == Principal(uuid.UUID(grace), frozenset({ADMIN}))
    assert await can_set_credit_limits(users_client, granted, grace)

    assert await run("grant", "grace@example.com") == 0  # granted twice: held once
    roles = await users_client.app[DB_POOL].fetchval(
        "SELECT roles FROM users WHERE id = $1", uuid.UUID(grace)
    )
    assert roles == [ADMIN]

    assert await run("revoke", "grace@example.com") == 0
    assert "revoked admin: grace@example.com" in capsys.readouterr().out
    revoked = await signed_in(users_client, "grace@example.com")
    assert verifier.principal(revoked).roles == frozenset()
    assert not await can_set_credit_limits(users_client, revoked, grace)


@pytest.mark.usefixtures("operator_environment")
async def test_list_prints_the_admins(users_client: Client, capsys: pytest.CaptureFixture[str]) -> None:
    admins = {email: await register(users_client, email) for email in ("zoe@example.com", "ada@example.com")}
    await register(users_client, "not-an-admin@example.com")
    for email in admins:
        assert await run("grant", email) == 0
    capsys.readouterr()

    assert await run("list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["ada@example.com", admins["ada@example.com"]],
        ["zoe@example.com", admins["zoe@example.com"]],
    ]


@pytest.mark.usefixtures("operator_environment")
async def test_an_unknown_email_exits_1_and_changes_nothing(
    users_client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    await register(users_client, "grace@example.com")
    for command in ("grant", "revoke"):
        assert await run(command, "nobody@example.com") == 1
        assert "no user has the email nobody@example.com" in capsys.readouterr().err
    assert await users_client.app[DB_POOL].fetchval("SELECT count(*) FROM users WHERE roles <> '{}'") == 0
    assert await run("list") == 0
    assert capsys.readouterr().out == ""
