"""A small client of the public API, for tests that need users and orders rather than HTTP details."""

import dataclasses
import uuid
from typing import Any

import aiohttp

from devstack.waiting import eventually

PASSWORD = "correct-horse-battery"
FINAL = {"APPROVED", "REJECTED", "CANCELLED"}


@dataclasses.dataclass(frozen=True)
class User:
    id: str
    email: str
    headers: dict[str, str]


async def new_user(http: aiohttp.ClientSession, url: str, *, credit_limit_cents: int = 100_000) -> User:
    email = f"user-{uuid.uuid4().hex[:10]}@example.com"
    body = {
        "email": email,
        "name": "Test User",
        "password": PASSWORD,
        "credit_limit_cents": credit_limit_cents,
    }
    async with http.post(f"{url}/api/users", json=body) as response:
        assert response.status == 201, await response.text()
        user_id = (await response.json())["id"]
    async with http.post(f"{url}/api/auth/token", json={"email": email, "password": PASSWORD}) as response:
        assert response.status == 200, await response.text()
        token = (await response.json())["access_token"]
    return User(user_id, email, {"Authorization": f"Bearer {token}"})


async def place_order(http: aiohttp.ClientSession, url: str, user: User, total_cents: int) -> dict[str, Any]:
    body = {"items": [{"sku": "SKU-1", "quantity": 1, "unit_price_cents": total_cents}]}
    async with http.post(f"{url}/api/orders", json=body, headers=user.headers) as response:
        assert response.status == 202, await response.text()
        order: dict[str, Any] = await response.json()
        return order


async def get_order(http: aiohttp.ClientSession, url: str, user: User, order_id: str) -> dict[str, Any]:
    async with http.get(f"{url}/api/orders/{order_id}", headers=user.headers) as response:
        assert response.status == 200, await response.text()
        order: dict[str, Any] = await response.json()
        return order


async def me(http: aiohttp.ClientSession, url: str, user: User) -> dict[str, Any]:
    async with http.get(f"{url}/api/users/me", headers=user.headers) as response:
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
