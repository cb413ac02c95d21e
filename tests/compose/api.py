"""A small client of the public API's version 2, for the compose tests, which reach the stack only
through the gateway's published port; and an admin, made as an operator makes one in compose.

New users get the policy's credit limit (NEW_USER_CREDIT_LIMIT_CENTS, which compose leaves at its
default) and orders are priced from the catalogue: a test that needs a given limit has an admin set
it, and one that needs a given total has an admin put a product of its own at that price.
"""

import dataclasses
import uuid
from typing import Any

import aiohttp

from devstack.waiting import eventually
from shared.api_versions import CURRENT_PREFIX
from tests.compose.conftest import docker_compose

PASSWORD = "correct-horse-battery"
FINAL = {"APPROVED", "REJECTED", "CANCELLED"}


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    email: str
    headers: dict[str, str]


def api(url: str) -> str:
    return f"{url}{CURRENT_PREFIX}"


async def new_user(http: aiohttp.ClientSession, url: str, *, name: str = "Test User") -> User:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "name": name, "password": PASSWORD}
    async with http.post(f"{api(url)}/users", json=body) as response:
        assert response.status == 201, await response.text()
        user_id = (await response.json())["id"]
    return User(user_id, email, await sign_in(http, url, email))


async def sign_in(http: aiohttp.ClientSession, url: str, email: str) -> dict[str, str]:
    """The Authorization header of a fresh access token."""
    async with http.post(f"{api(url)}/auth/token", json={"email": email, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        return {"Authorization": f"Bearer {(await response.json())['access_token']}"}


async def new_admin(http: aiohttp.ClientSession, url: str) -> User:
    """A user made an admin by the operator's command, run where compose lets an operator reach
    users_service's database: in a container of the `tools`. The role is in the tokens the user gets
    from then on, so the admin signs in again."""
    user = await new_user(http, url, name="Compose Admin")
    await docker_compose(
        "run", "--rm", "--no-deps", "-T", "tools", "python", "-m", "users_service.admin", "grant", user.email
    )
    return await signed_in(http, url, user.email)


async def signed_in(http: aiohttp.ClientSession, url: str, email: str) -> User:
    """The user of `email`, signed in now: with the roles they hold now."""
    headers = await sign_in(http, url, email)
    async with http.get(f"{api(url)}/users/me", headers=headers) as response:
        assert response.status == 200, await response.text()
        return User((await response.json())["id"], email, headers)


async def set_credit_limit(
    http: aiohttp.ClientSession, url: str, admin: User, user: User, credit_limit_cents: int
) -> dict[str, Any]:
    async with http.put(
        f"{api(url)}/users/{user.id}/credit-limit",
        json={"credit_limit_cents": credit_limit_cents},
        headers=admin.headers,
    ) as response:
        assert response.status == 200, await response.text()
        changed: dict[str, Any] = await response.json()
        return changed


async def new_product(http: aiohttp.ClientSession, url: str, admin: User, price_cents: int) -> str:
    """A product of the test's own at `price_cents`, on sale; its sku."""
    sku = f"COMPOSE-{uuid.uuid4().hex[:12]}"
    body = {"name": f"A product at {price_cents} cents", "price_cents": price_cents, "active": True}
    async with http.put(f"{api(url)}/products/{sku}", json=body, headers=admin.headers) as response:
        assert response.status == 201, await response.text()
    return sku


async def place_order(
    http: aiohttp.ClientSession, url: str, user: User, sku: str, quantity: int = 1
) -> dict[str, Any]:
    body = {"items": [{"sku": sku, "quantity": quantity}]}
    async with http.post(f"{api(url)}/orders", json=body, headers=user.headers) as response:
        assert response.status == 202, await response.text()
        order: dict[str, Any] = await response.json()
        return order


async def get_order(http: aiohttp.ClientSession, url: str, user: User, order_id: str) -> dict[str, Any]:
    async with http.get(f"{api(url)}/orders/{order_id}", headers=user.headers) as response:
        assert response.status == 200, await response.text()
        order: dict[str, Any] = await response.json()
        return order


async def me(http: aiohttp.ClientSession, url: str, user: User) -> dict[str, Any]:
    async with http.get(f"{api(url)}/users/me", headers=user.headers) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def final_order(
    http: aiohttp.ClientSession, url: str, user: User, order_id: str, within: float = 30.0
) -> dict[str, Any]:
    async def decided() -> dict[str, Any] | None:
        order = await get_order(http, url, user, order_id)
        return order if order["status"] in FINAL else None

    return await eventually(decided, within=within, what=f"order {order_id} decided")
