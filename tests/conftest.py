"""Fixtures every kind of test may use: real Postgres, real RabbitMQ, a signing key pair."""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from yarl import URL

from shared.auth import TokenVerifier
from tests.support import ADMIN_DSN, RABBITMQ_URL, KeyPair, drop_databases, dsn_for, make_key_pair
from users_service.tokens import TokenIssuer


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("keys"))


ISSUER, AUDIENCE = "eda-reference/users", "eda-reference"  # the services' defaults


@pytest.fixture
def issuer(key_pair: KeyPair) -> TokenIssuer:
    """Signs tokens as users_service does."""
    return TokenIssuer.from_pem_file(key_pair.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)


@pytest.fixture
def verifier(key_pair: KeyPair) -> TokenVerifier:
    """Verifies tokens as every process does."""
    return TokenVerifier.from_pem_file(key_pair.public, issuer=ISSUER, audience=AUDIENCE)


CreateDatabase = Callable[[str], Awaitable[str]]


@pytest.fixture
async def create_database() -> AsyncIterator[CreateDatabase]:
    """Make empty databases that are dropped after the test; each call returns a DSN."""
    created: list[str] = []

    async def create(prefix: str) -> str:
        name = f"test_{prefix}_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        created.append(name)
        return dsn_for(name)

    yield create
    await drop_databases(created)


async def rabbitmqctl(*arguments: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *arguments, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode == 0, f"rabbitmqctl {' '.join(arguments)}: {output.decode()}"


@contextlib.asynccontextmanager
async def isolated_vhost() -> AsyncIterator[str]:
    """A RabbitMQ virtual host of the test's own: its queues see no other test's events."""
    base = URL(RABBITMQ_URL)
    name = f"test-{uuid.uuid4().hex[:10]}"
    await rabbitmqctl("add_vhost", name)
    try:
        await rabbitmqctl("set_permissions", "-p", name, base.user or "guest", ".*", ".*", ".*")
        yield f"{str(base).rstrip('/')}/{name}"
    finally:
        await rabbitmqctl("delete_vhost", name)


@pytest.fixture
async def rabbitmq_url() -> AsyncIterator[str]:
    async with isolated_vhost() as url:
        yield url


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parent.parent
