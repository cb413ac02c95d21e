"""The services' apps, in-process, on fresh databases of the real Postgres and the real RabbitMQ.

The database and the vhost are requested before `aiohttp_client`, so they are torn down after the
app has shut down (pytest tears fixtures down in the reverse order it set them up). Every response
the apps send in any test is checked against their OpenAPI contract; a test whose responses break
it fails.

Version 2 of the API leaves two things to an admin that version 1 let any client choose: what an
order costs (the catalogue prices it) and a user's credit limit (a new user gets the policy's). A
test that needs either acts as an admin (`admin_headers`): it sells a product of its own at the
price it needs (`new_product`), or sets the limit (`set_credit_limit`).
"""

import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any, TypeVar

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from devstack.keys import KeyPair
from devstack.rabbitmq import Vhost
from orders_service.app import create_app as create_orders_app
from orders_service.config import OrdersConfig
from shared.auth import ADMIN
from shared.config import Secret
from shared.db import SHARED_MIGRATIONS, apply_migrations
from tests.conftest import CreateDatabase
from tests.contract import response_checker
from users_service.app import create_app as create_users_app
from users_service.config import UsersConfig
from users_service.tokens import TokenIssuer


@pytest.fixture
async def shared_tables(create_database: CreateDatabase) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database that holds the shared library's tables alone (outbox, inbox), for
    the tests of what works on them without a service."""
    pool = await asyncpg.create_pool(await create_database("shared_tables"), min_size=1, max_size=4)
    await apply_migrations(pool, [SHARED_MIGRATIONS])
    yield pool
    await pool.close()


Client = TestClient[web.Request, web.Application]
# A client of an app (`aiohttp_client(app)`), or of a server a test started itself (`aiohttp_server`).
App = TypeVar("App", web.Application, None)


@pytest.fixture
def contract_violations() -> Iterator[list[str]]:
    violations: list[str] = []
    yield violations
    assert not violations, "responses broke the contract:\n" + "\n".join(violations)


def held_to_contract(app: web.Application, violations: list[str]) -> web.Application:
    app.middlewares.insert(0, response_checker(violations))
    return app


@pytest.fixture
async def users_config(create_database: CreateDatabase, key_pair: KeyPair, broker: Vhost) -> UsersConfig:
    """users_service's settings on a fresh database and vhost of the test's own."""
    return UsersConfig(
        database_url=Secret(await create_database("users")),
        rabbitmq_url=Secret(broker.url_for("users_service")),
        jwt_public_key_file=str(key_pair.public),
        jwt_private_key_file=str(key_pair.private),
        startup_timeout=5,
    )


@pytest.fixture
async def users_client(
    users_config: UsersConfig, contract_violations: list[str], aiohttp_client: AiohttpClient
) -> Client:
    return await aiohttp_client(held_to_contract(create_users_app(users_config), contract_violations))


@pytest.fixture
async def orders_client(
    create_database: CreateDatabase,
    key_pair: KeyPair,
    broker: Vhost,
    contract_violations: list[str],
    aiohttp_client: AiohttpClient,
) -> Client:
    config = OrdersConfig(
        database_url=Secret(await create_database("orders")),
        rabbitmq_url=Secret(broker.url_for("orders_service")),
        jwt_public_key_file=str(key_pair.public),
        startup_timeout=5,
    )
    return await aiohttp_client(held_to_contract(create_orders_app(config), contract_violations))


@pytest.fixture
def token_for(issuer: TokenIssuer) -> Callable[[uuid.UUID], dict[str, str]]:
    """Authorization headers for a user id, signed like users_service signs them."""

    def headers(user_id: uuid.UUID) -> dict[str, str]:
        return {"Authorization": f"Bearer {issuer.issue(user_id)}"}

    return headers


@pytest.fixture
def admin_headers(issuer: TokenIssuer) -> dict[str, str]:
    """Authorization headers of an admin. The API grants no role (an operator does, with
    `python -m users_service.admin`), so the test signs the token itself, as users_service would for
    a user granted the role; its user id needs no user row: the services trust the roles of a valid
    token as they trust its subject."""
    return {"Authorization": f"Bearer {issuer.issue(uuid.uuid4(), [ADMIN])}"}


async def new_product(
    client: TestClient[web.Request, App],
    admin: Mapping[str, str],
    price_cents: int,
    *,
    active: bool = True,
) -> str:
    """As an admin: a product of the test's own at `price_cents`, under a sku of its own (never one
    of the seeded catalogue's); its sku. `client` is orders_service's, or a gateway's."""
    sku = f"TEST-{uuid.uuid4().hex[:12].upper()}"
    body = {"name": f"Test product at {price_cents} cents", "price_cents": price_cents, "active": active}
    response = await client.put(f"/api/v2/products/{sku}", json=body, headers=admin)
    assert response.status == 201, await response.text()
    return sku


async def set_credit_limit(
    client: TestClient[web.Request, App],
    admin: Mapping[str, str],
    user_id: str | uuid.UUID,
    credit_limit_cents: int,
) -> dict[str, Any]:
    """As an admin: the user's credit limit, set; the user as the answer shows it. `client` is
    users_service's, or a gateway's."""
    response = await client.put(
        f"/api/v2/users/{user_id}/credit-limit",
        json={"credit_limit_cents": credit_limit_cents},
        headers=admin,
    )
    assert response.status == 200, await response.text()
    user: dict[str, Any] = await response.json()
    assert user["credit_limit_cents"] == credit_limit_cents, user
    return user
