"""Every response the contracts document is produced by a test, and conforms.

The table below has one scenario per (operation, documented status). A test checks the table
against the contracts in both directions, so documenting a status without producing it (or
producing one without documenting it) fails; each scenario then runs against the real service,
with its response checked against the contract by the fixtures in conftest.py.
"""

import contextlib
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from shared.app_keys import BROKER, DB_POOL
from shared.openapi import OpenApiSpec
from tests.integration.conftest import Client
from users_service.config import UsersConfig
from users_service.routes import PASSWORD_HASHER

ROOT = Path(__file__).resolve().parents[2]
TokenFor = Callable[[uuid.UUID], dict[str, str]]
Scenario = Callable[[Client, TokenFor], Awaitable[aiohttp.ClientResponse]]
JSON = {"Content-Type": "application/json"}
ADA = {"email": "ada@example.com", "name": "Ada", "password": "correct-horse"}
ORDER = {"items": [{"sku": "BOOK-42", "quantity": 1, "unit_price_cents": 100}]}
HUGE = b'{"padding": "' + b"x" * 70_000 + b'"}'


async def registered(client: Client) -> str:
    response = await client.post("/api/users", json=ADA)
    assert response.status == 201
    user_id: str = (await response.json())["id"]
    return user_id


async def own_order(client: Client, auth: dict[str, str], status: str | None = None) -> str:
    order_id: str = (await (await client.post("/api/orders", json=ORDER, headers=auth)).json())["id"]
    if status is not None:  # a state the saga would reach; set directly, as no users_service runs here
        await client.app[DB_POOL].execute(
            "UPDATE orders SET status = $2 WHERE id = $1", uuid.UUID(order_id), status
        )
    return order_id


async def not_ready(client: Client, _: TokenFor) -> aiohttp.ClientResponse:
    await client.app[BROKER].close()  # the broker "goes away": readiness must say so
    return await client.get("/readyz")


async def cancel_twice(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
    auth = token_for(uuid.uuid4())
    order_id = await own_order(client, auth)
    await client.post(f"/api/orders/{order_id}/cancel", headers=auth)
    return await client.post(f"/api/orders/{order_id}/cancel", headers=auth)


async def cancel_rejected(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
    auth = token_for(uuid.uuid4())
    order_id = await own_order(client, auth, status="REJECTED")
    return await client.post(f"/api/orders/{order_id}/cancel", headers=auth)


async def idempotency_key_reused(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
    headers = {**token_for(uuid.uuid4()), "Idempotency-Key": "order-1"}
    await client.post("/api/orders", json=ORDER, headers=headers)
    other = {"items": [{**ORDER["items"][0], "quantity": 2}]}
    return await client.post("/api/orders", json=other, headers=headers)


async def me_as_ada(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
    return await client.get("/api/users/me", headers=token_for(uuid.UUID(await registered(client))))


async def ada_by_id(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
    user_id = await registered(client)
    return await client.get(f"/api/users/{user_id}", headers=token_for(uuid.UUID(user_id)))


async def token_for_ada(client: Client, _: TokenFor) -> aiohttp.ClientResponse:
    await registered(client)
    return await client.post("/api/auth/token", json={"email": ADA["email"], "password": ADA["password"]})


async def throttled_sign_in(client: Client, _: TokenFor) -> aiohttp.ClientResponse:
    wrong = {"email": "x@y.z", "password": "wrong"}
    for _attempt in range(UsersConfig().login_max_failures):
        await client.post("/api/auth/token", json=wrong)
    return await client.post("/api/auth/token", json=wrong)


def while_every_hashing_slot_is_taken(path: str, body: dict[str, str]) -> Scenario:
    async def call(client: Client, _: TokenFor) -> aiohttp.ClientResponse:
        slots = client.app[PASSWORD_HASHER].slots
        async with contextlib.AsyncExitStack() as held:
            for _slot in range(slots.size):
                await held.enter_async_context(slots.taken())
            return await client.post(path, json=body)

    return call


async def email_taken(client: Client, _: TokenFor) -> aiohttp.ClientResponse:
    await registered(client)
    return await client.post("/api/users", json=ADA)


async def read_own_order(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
    auth = token_for(uuid.uuid4())
    return await client.get(f"/api/orders/{await own_order(client, auth)}", headers=auth)


async def cancel_own_order(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
    auth = token_for(uuid.uuid4())
    return await client.post(f"/api/orders/{await own_order(client, auth)}/cancel", headers=auth)


def anonymous(method: str, path: str) -> Scenario:
    async def call(client: Client, _: TokenFor) -> aiohttp.ClientResponse:
        return await client.request(method, path)

    return call


def signed_in(method: str, path: str, **kwargs: object) -> Scenario:
    async def call(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
        return await client.request(method, path, headers=token_for(uuid.uuid4()), **kwargs)  # type: ignore[arg-type]

    return call


def posting(path: str, body: bytes, headers: dict[str, str], signed: bool = False) -> Scenario:
    async def call(client: Client, token_for: TokenFor) -> aiohttp.ClientResponse:
        auth = token_for(uuid.uuid4()) if signed else {}
        return await client.post(path, data=body, headers={**headers, **auth})

    return call


NOBODY = str(uuid.UUID(int=1))
SCENARIOS: dict[tuple[str, str, str, int], Scenario] = {
    ("users_service", "POST", "/api/users", 201): posting(
        "/api/users", b'{"email": "a@b.cd", "name": "A", "password": "12345678"}', JSON
    ),
    ("users_service", "POST", "/api/users", 400): posting("/api/users", b"{not json", JSON),
    ("users_service", "POST", "/api/users", 409): email_taken,
    ("users_service", "POST", "/api/users", 413): posting("/api/users", HUGE, JSON),
    ("users_service", "POST", "/api/users", 415): posting(
        "/api/users", b"email=a", {"Content-Type": "text/plain"}
    ),
    ("users_service", "POST", "/api/users", 422): posting("/api/users", b'{"email": "nope"}', JSON),
    ("users_service", "POST", "/api/users", 503): while_every_hashing_slot_is_taken("/api/users", ADA),
    ("users_service", "POST", "/api/auth/token", 200): token_for_ada,
    ("users_service", "POST", "/api/auth/token", 400): posting("/api/auth/token", b"[", JSON),
    ("users_service", "POST", "/api/auth/token", 401): posting(
        "/api/auth/token", b'{"email": "x@y.z", "password": "wrong"}', JSON
    ),
    ("users_service", "POST", "/api/auth/token", 413): posting("/api/auth/token", HUGE, JSON),
    ("users_service", "POST", "/api/auth/token", 415): posting(
        "/api/auth/token", b"x", {"Content-Type": "text/plain"}
    ),
    ("users_service", "POST", "/api/auth/token", 422): posting(
        "/api/auth/token", b'{"email": "x@y.z"}', JSON
    ),
    ("users_service", "POST", "/api/auth/token", 429): throttled_sign_in,
    ("users_service", "POST", "/api/auth/token", 503): while_every_hashing_slot_is_taken(
        "/api/auth/token", {"email": ADA["email"], "password": ADA["password"]}
    ),
    ("users_service", "GET", "/api/users/me", 200): me_as_ada,
    ("users_service", "GET", "/api/users/me", 401): anonymous("GET", "/api/users/me"),
    ("users_service", "GET", "/api/users/me", 404): signed_in("GET", "/api/users/me"),
    ("users_service", "GET", "/api/users/{id}", 200): ada_by_id,
    ("users_service", "GET", "/api/users/{id}", 401): anonymous("GET", f"/api/users/{NOBODY}"),
    ("users_service", "GET", "/api/users/{id}", 404): signed_in("GET", f"/api/users/{NOBODY}"),
    ("users_service", "GET", "/healthz", 200): anonymous("GET", "/healthz"),
    ("users_service", "GET", "/readyz", 200): anonymous("GET", "/readyz"),
    ("users_service", "GET", "/readyz", 503): not_ready,
    ("users_service", "GET", "/metrics", 200): anonymous("GET", "/metrics"),
    ("orders_service", "POST", "/api/orders", 202): signed_in("POST", "/api/orders", json=ORDER),
    ("orders_service", "POST", "/api/orders", 400): posting("/api/orders", b"{", JSON, signed=True),
    ("orders_service", "POST", "/api/orders", 401): anonymous("POST", "/api/orders"),
    ("orders_service", "POST", "/api/orders", 409): idempotency_key_reused,
    ("orders_service", "POST", "/api/orders", 413): posting("/api/orders", HUGE, JSON, signed=True),
    ("orders_service", "POST", "/api/orders", 415): posting(
        "/api/orders", b"x", {"Content-Type": "text/csv"}, signed=True
    ),
    ("orders_service", "POST", "/api/orders", 422): posting(
        "/api/orders", b'{"items": []}', JSON, signed=True
    ),
    ("orders_service", "GET", "/api/orders", 200): signed_in("GET", "/api/orders"),
    ("orders_service", "GET", "/api/orders", 401): anonymous("GET", "/api/orders"),
    ("orders_service", "GET", "/api/orders", 422): signed_in("GET", "/api/orders?limit=1000"),
    ("orders_service", "GET", "/api/orders/{id}", 200): read_own_order,
    ("orders_service", "GET", "/api/orders/{id}", 401): anonymous("GET", f"/api/orders/{NOBODY}"),
    ("orders_service", "GET", "/api/orders/{id}", 404): signed_in("GET", f"/api/orders/{NOBODY}"),
    ("orders_service", "POST", "/api/orders/{id}/cancel", 200): cancel_twice,
    ("orders_service", "POST", "/api/orders/{id}/cancel", 202): cancel_own_order,
    ("orders_service", "POST", "/api/orders/{id}/cancel", 401): anonymous(
        "POST", f"/api/orders/{NOBODY}/cancel"
    ),
    ("orders_service", "POST", "/api/orders/{id}/cancel", 404): signed_in(
        "POST", f"/api/orders/{NOBODY}/cancel"
    ),
    ("orders_service", "POST", "/api/orders/{id}/cancel", 409): cancel_rejected,
    ("orders_service", "GET", "/healthz", 200): anonymous("GET", "/healthz"),
    ("orders_service", "GET", "/readyz", 200): anonymous("GET", "/readyz"),
    ("orders_service", "GET", "/readyz", 503): not_ready,
    ("orders_service", "GET", "/metrics", 200): anonymous("GET", "/metrics"),
}


def documented_responses() -> set[tuple[str, str, str, int]]:
    documented = set()
    for service in ("users_service", "orders_service"):
        spec = OpenApiSpec.load(ROOT / service / "openapi.yaml")
        for (method, path), operation in spec.operations.items():
            documented |= {(service, method, path, status) for status in operation.responses}
    return documented


def test_every_documented_response_has_a_scenario_and_no_other() -> None:
    documented = documented_responses()
    assert set(SCENARIOS) - documented == set(), "scenarios for responses the contract does not document"
    assert documented - set(SCENARIOS) == set(), "documented responses no test produces"


def cases(service: str) -> list[tuple[str, str, str, int]]:
    return sorted(case for case in SCENARIOS if case[0] == service)


def case_id(case: tuple[str, str, str, int]) -> str:
    return " ".join(map(str, case[1:]))


@pytest.mark.parametrize("case", cases("users_service"), ids=case_id)
async def test_users_service_produces_each_documented_response(
    case: tuple[str, str, str, int], users_client: Client, token_for: TokenFor
) -> None:
    response = await SCENARIOS[case](users_client, token_for)
    assert response.status == case[3], await response.text()


@pytest.mark.parametrize("case", cases("orders_service"), ids=case_id)
async def test_orders_service_produces_each_documented_response(
    case: tuple[str, str, str, int], orders_client: Client, token_for: TokenFor
) -> None:
    response = await SCENARIOS[case](orders_client, token_for)
    assert response.status == case[3], await response.text()
