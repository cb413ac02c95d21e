"""The services' apps, in-process, on fresh databases of the real Postgres and the real RabbitMQ.

The database and the vhost are requested before `aiohttp_client`, so they are torn down after the
app has shut down (pytest tears fixtures down in the reverse order it set them up). Every response
the apps send in any test is checked against their OpenAPI contract; a test whose responses break
it fails.
"""

import uuid
from collections.abc import Callable, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from devstack.keys import KeyPair
from devstack.rabbitmq import Vhost
from orders_service.app import create_app as create_orders_app
from orders_service.config import OrdersConfig
from shared.config import Secret
from tests.conftest import CreateDatabase
from tests.contract import response_checker
from users_service.app import create_app as create_users_app
from users_service.config import UsersConfig
from users_service.tokens import TokenIssuer

Client = TestClient[web.Request, web.Application]


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
