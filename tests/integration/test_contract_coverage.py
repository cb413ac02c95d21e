"""Every response the contracts document is produced by a test, and conforms.

The table below has one scenario per (operation, documented status). A test checks the table
against the contracts in both directions, so documenting a status without producing it (or
producing one without documenting it) fails; each scenario then runs against the real service,
with its response checked against the contract by the fixtures in conftest.py.

The operations that versions 1 and 2 share are served by the same handlers, so their scenarios are
written once and made for each version's paths (`users_scenarios`, `orders_scenarios`); where the
versions' contracts differ (what a request body may say), so do the scenarios. The operations of
version 2 alone, and the processes' own endpoints, follow.
"""

import contextlib
import dataclasses
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shared.app_keys import BROKER, DB_POOL
from shared.openapi import OpenApiSpec
from tests.integration.conftest import Client, new_product
from users_service.config import UsersConfig
from users_service.routes import PASSWORD_HASHER

ROOT = Path(__file__).resolve().parents[2]
TokenFor = Callable[[uuid.UUID], dict[str, str]]


@dataclasses.dataclass(frozen=True)
class Callers:
    """Whom a scenario may call as: a user of a given id, anyone signed in, or an admin."""

    user: TokenFor
    admin: dict[str, str]

    def anyone(self) -> dict[str, str]:
        """A signed-in user of an id of their own, with no role."""
        return self.user(uuid.uuid4())


Scenario = Callable[[Client, Callers], Awaitable[aiohttp.ClientResponse]]
Case = tuple[str, str, str, int]
JSON = {"Content-Type": "application/json"}
ADA = {"email": "ada@example.com", "name": "Ada", "password": "correct-horse"}
HUGE = b'{"padding": "' + b"x" * 70_000 + b'"}'
V1, V2 = "/api", "/api/v2"
NOBODY = str(uuid.UUID(int=1))
PRICE_CENTS = 1250


# --- scenarios any operation may use -------------------------------------------------------------


def anonymous(method: str, path: str) -> Scenario:
    async def call(client: Client, _: Callers) -> aiohttp.ClientResponse:
        return await client.request(method, path)

    return call


def signed_in(method: str, path: str, **kwargs: Any) -> Scenario:
    async def call(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        return await client.request(method, path, headers=callers.anyone(), **kwargs)

    return call


def as_admin(method: str, path: str, **kwargs: Any) -> Scenario:
    async def call(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        return await client.request(method, path, headers=callers.admin, **kwargs)

    return call


def sending(method: str, path: str, body: bytes, headers: dict[str, str], *, caller: str = "") -> Scenario:
    """`body` as it is, with `headers`; as `caller`: "" (anonymous), "user" (anyone signed in) or
    "admin"."""

    async def call(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        auth = {"": {}, "user": callers.anyone(), "admin": callers.admin}[caller]
        return await client.request(method, path, data=body, headers={**headers, **auth})

    return call


async def not_ready(client: Client, _: Callers) -> aiohttp.ClientResponse:
    await client.app[BROKER].close()  # the broker "goes away": readiness must say so
    return await client.get("/readyz")


def health_scenarios(service: str) -> dict[Case, Scenario]:
    return {
        (service, "GET", "/healthz", 200): anonymous("GET", "/healthz"),
        (service, "GET", "/readyz", 200): anonymous("GET", "/readyz"),
        (service, "GET", "/readyz", 503): not_ready,
        (service, "GET", "/metrics", 200): anonymous("GET", "/metrics"),
    }


# --- users_service -------------------------------------------------------------------------------


async def registered(client: Client, api: str = V2) -> str:
    response = await client.post(f"{api}/users", json=ADA)
    assert response.status == 201
    user_id: str = (await response.json())["id"]
    return user_id


def while_every_hashing_slot_is_taken(path: str, body: dict[str, str]) -> Scenario:
    async def call(client: Client, _: Callers) -> aiohttp.ClientResponse:
        slots = client.app[PASSWORD_HASHER].slots
        async with contextlib.AsyncExitStack() as held:
            for _slot in range(slots.size):
                await held.enter_async_context(slots.taken())
            return await client.post(path, json=body)

    return call


def users_scenarios(api: str) -> dict[Case, Scenario]:
    """The scenarios of the user operations that both versions serve, at `api`'s paths."""

    async def email_taken(client: Client, _: Callers) -> aiohttp.ClientResponse:
        await registered(client, api)
        return await client.post(f"{api}/users", json=ADA)

    async def token_for_ada(client: Client, _: Callers) -> aiohttp.ClientResponse:
        await registered(client, api)
        credentials = {"email": ADA["email"], "password": ADA["password"]}
        return await client.post(f"{api}/auth/token", json=credentials)

    async def throttled_sign_in(client: Client, _: Callers) -> aiohttp.ClientResponse:
        wrong = {"email": "x@y.z", "password": "wrong"}
        for _attempt in range(UsersConfig().login_max_failures):
            await client.post(f"{api}/auth/token", json=wrong)
        return await client.post(f"{api}/auth/token", json=wrong)

    async def me_as_ada(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        ada = uuid.UUID(await registered(client, api))
        return await client.get(f"{api}/users/me", headers=callers.user(ada))

    async def ada_by_id(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        user_id = await registered(client, api)
        return await client.get(f"{api}/users/{user_id}", headers=callers.user(uuid.UUID(user_id)))

    # Version 1 still takes a credit limit (and ignores it), so a bad email it is; version 2 refuses
    # the credit limit itself, as any field its contract does not name.
    unacceptable = (
        b'{"email": "nope"}'
        if api == V1
        else b'{"email": "a@b.cd", "name": "A", "password": "12345678", "credit_limit_cents": 5000}'
    )
    users, token = f"{api}/users", f"{api}/auth/token"
    credentials = {"email": ADA["email"], "password": ADA["password"]}
    u = "users_service"
    return {
        (u, "POST", users, 201): sending(
            "POST", users, b'{"email": "a@b.cd", "name": "A", "password": "12345678"}', JSON
        ),
        (u, "POST", users, 400): sending("POST", users, b"{not json", JSON),
        (u, "POST", users, 409): email_taken,
        (u, "POST", users, 413): sending("POST", users, HUGE, JSON),
        (u, "POST", users, 415): sending("POST", users, b"email=a", {"Content-Type": "text/plain"}),
        (u, "POST", users, 422): sending("POST", users, unacceptable, JSON),
        (u, "POST", users, 503): while_every_hashing_slot_is_taken(users, ADA),
        (u, "POST", token, 200): token_for_ada,
        (u, "POST", token, 400): sending("POST", token, b"[", JSON),
        (u, "POST", token, 401): sending("POST", token, b'{"email": "x@y.z", "password": "wrong"}', JSON),
        (u, "POST", token, 413): sending("POST", token, HUGE, JSON),
        (u, "POST", token, 415): sending("POST", token, b"x", {"Content-Type": "text/plain"}),
        (u, "POST", token, 422): sending("POST", token, b'{"email": "x@y.z"}', JSON),
        (u, "POST", token, 429): throttled_sign_in,
        (u, "POST", token, 503): while_every_hashing_slot_is_taken(token, credentials),
        (u, "GET", f"{api}/users/me", 200): me_as_ada,
        (u, "GET", f"{api}/users/me", 401): anonymous("GET", f"{api}/users/me"),
        (u, "GET", f"{api}/users/me", 404): signed_in("GET", f"{api}/users/me"),
        (u, "GET", f"{api}/users/{{id}}", 200): ada_by_id,
        (u, "GET", f"{api}/users/{{id}}", 401): anonymous("GET", f"{api}/users/{NOBODY}"),
        (u, "GET", f"{api}/users/{{id}}", 404): signed_in("GET", f"{api}/users/{NOBODY}"),
    }


async def ada_given_a_limit(client: Client, callers: Callers) -> aiohttp.ClientResponse:
    user_id = await registered(client)
    return await client.put(
        f"{V2}/users/{user_id}/credit-limit", json={"credit_limit_cents": 250_000}, headers=callers.admin
    )


async def ada_given_a_limit_by_herself(client: Client, callers: Callers) -> aiohttp.ClientResponse:
    user_id = await registered(client)
    return await client.put(
        f"{V2}/users/{user_id}/credit-limit",
        json={"credit_limit_cents": 10_000_000},
        headers=callers.user(uuid.UUID(user_id)),
    )


def credit_limit_scenarios() -> dict[Case, Scenario]:
    operation = f"{V2}/users/{{id}}/credit-limit"
    nobody = f"{V2}/users/{NOBODY}/credit-limit"
    u = "users_service"
    return {
        (u, "PUT", operation, 200): ada_given_a_limit,
        (u, "PUT", operation, 400): sending("PUT", nobody, b"{", JSON, caller="admin"),
        (u, "PUT", operation, 401): anonymous("PUT", nobody),
        (u, "PUT", operation, 403): ada_given_a_limit_by_herself,
        (u, "PUT", operation, 404): as_admin("PUT", nobody, json={"credit_limit_cents": 1}),
        (u, "PUT", operation, 413): sending("PUT", nobody, HUGE, JSON, caller="admin"),
        (u, "PUT", operation, 415): sending(
            "PUT", nobody, b"credit_limit_cents=1", {"Content-Type": "text/plain"}, caller="admin"
        ),
        (u, "PUT", operation, 422): as_admin("PUT", nobody, json={"credit_limit_cents": 10_000_001}),
    }


# --- orders_service ------------------------------------------------------------------------------


def item(api: str, sku: str, quantity: int = 1) -> dict[str, Any]:
    """An item as `api`'s version sends it: version 1 also sends the price, the catalogue's."""
    sent: dict[str, Any] = {"sku": sku, "quantity": quantity}
    return sent | {"unit_price_cents": PRICE_CENTS} if api == V1 else sent


async def own_order(
    client: Client, callers: Callers, auth: dict[str, str], api: str, status: str | None = None
) -> str:
    sku = await new_product(client, callers.admin, PRICE_CENTS)
    placed = await client.post(f"{api}/orders", json={"items": [item(api, sku)]}, headers=auth)
    assert placed.status == 202, await placed.text()
    order_id: str = (await placed.json())["id"]
    if status is not None:  # a state the saga would reach; set directly, as no users_service runs here
        await client.app[DB_POOL].execute(
            "UPDATE orders SET status = $2 WHERE id = $1", uuid.UUID(order_id), status
        )
    return order_id


def orders_scenarios(api: str) -> dict[Case, Scenario]:
    """The scenarios of the order operations that both versions serve, at `api`'s paths."""

    async def place(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        sku = await new_product(client, callers.admin, PRICE_CENTS)
        return await client.post(f"{api}/orders", json={"items": [item(api, sku)]}, headers=callers.anyone())

    async def idempotency_key_reused(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        sku = await new_product(client, callers.admin, PRICE_CENTS)
        headers = {**callers.anyone(), "Idempotency-Key": "order-1"}
        await client.post(f"{api}/orders", json={"items": [item(api, sku)]}, headers=headers)
        return await client.post(f"{api}/orders", json={"items": [item(api, sku, 2)]}, headers=headers)

    async def unacceptable_order(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        # Version 1: a price that is not the catalogue's. Version 2: any price at all.
        sku = await new_product(client, callers.admin, PRICE_CENTS)
        sent = {"sku": sku, "quantity": 1, "unit_price_cents": 0 if api == V1 else PRICE_CENTS}
        return await client.post(f"{api}/orders", json={"items": [sent]}, headers=callers.anyone())

    async def read_own_order(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        auth = callers.anyone()
        return await client.get(f"{api}/orders/{await own_order(client, callers, auth, api)}", headers=auth)

    async def cancel_own_order(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        auth = callers.anyone()
        order_id = await own_order(client, callers, auth, api)
        return await client.post(f"{api}/orders/{order_id}/cancel", headers=auth)

    async def cancel_twice(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        auth = callers.anyone()
        order_id = await own_order(client, callers, auth, api)
        await client.post(f"{api}/orders/{order_id}/cancel", headers=auth)
        return await client.post(f"{api}/orders/{order_id}/cancel", headers=auth)

    async def cancel_rejected(client: Client, callers: Callers) -> aiohttp.ClientResponse:
        auth = callers.anyone()
        order_id = await own_order(client, callers, auth, api, status="REJECTED")
        return await client.post(f"{api}/orders/{order_id}/cancel", headers=auth)

    orders, one, cancel = f"{api}/orders", f"{api}/orders/{{id}}", f"{api}/orders/{{id}}/cancel"
    o = "orders_service"
    return {
        (o, "POST", orders, 202): place,
        (o, "POST", orders, 400): sending("POST", orders, b"{", JSON, caller="user"),
        (o, "POST", orders, 401): anonymous("POST", orders),
        (o, "POST", orders, 409): idempotency_key_reused,
        (o, "POST", orders, 413): sending("POST", orders, HUGE, JSON, caller="user"),
        (o, "POST", orders, 415): sending("POST", orders, b"x", {"Content-Type": "text/csv"}, caller="user"),
        (o, "POST", orders, 422): unacceptable_order,
        (o, "GET", orders, 200): signed_in("GET", orders),
        (o, "GET", orders, 401): anonymous("GET", orders),
        (o, "GET", orders, 422): signed_in("GET", f"{orders}?limit=1000"),
        (o, "GET", one, 200): read_own_order,
        (o, "GET", one, 401): anonymous("GET", f"{orders}/{NOBODY}"),
        (o, "GET", one, 404): signed_in("GET", f"{orders}/{NOBODY}"),
        (o, "POST", cancel, 200): cancel_twice,
        (o, "POST", cancel, 202): cancel_own_order,
        (o, "POST", cancel, 401): anonymous("POST", f"{orders}/{NOBODY}/cancel"),
        (o, "POST", cancel, 404): signed_in("POST", f"{orders}/{NOBODY}/cancel"),
        (o, "POST", cancel, 409): cancel_rejected,
    }


async def product_replaced(client: Client, callers: Callers) -> aiohttp.ClientResponse:
    sku = await new_product(client, callers.admin, PRICE_CENTS)
    change = {"name": "Enamel mug", "price_cents": 950, "active": False}
    return await client.put(f"{V2}/products/{sku}", json=change, headers=callers.admin)


def catalogue_scenarios() -> dict[Case, Scenario]:
    products, one = f"{V2}/products", f"{V2}/products/{{sku}}"
    mug = f"{V2}/products/MUG-2"
    change = {"name": "Enamel mug", "price_cents": 950, "active": True}
    o = "orders_service"
    return {
        (o, "GET", products, 200): anonymous("GET", products),
        (o, "GET", products, 422): anonymous("GET", f"{products}?limit=0"),
        (o, "GET", one, 200): anonymous("GET", f"{V2}/products/BOOK-42"),  # of the seeded catalogue
        (o, "GET", one, 404): anonymous("GET", f"{V2}/products/NO-SUCH-THING"),
        (o, "PUT", one, 200): product_replaced,
        (o, "PUT", one, 201): as_admin("PUT", mug, json=change),
        (o, "PUT", one, 400): sending("PUT", mug, b"{", JSON, caller="admin"),
        (o, "PUT", one, 401): anonymous("PUT", mug),
        (o, "PUT", one, 403): signed_in("PUT", mug, json=change),
        (o, "PUT", one, 413): sending("PUT", mug, HUGE, JSON, caller="admin"),
        (o, "PUT", one, 415): sending(
            "PUT", mug, b"name=mug", {"Content-Type": "text/plain"}, caller="admin"
        ),
        (o, "PUT", one, 422): as_admin("PUT", mug, json={**change, "price_cents": -1}),
    }


SCENARIOS: dict[Case, Scenario] = {
    **users_scenarios(V2),
    **credit_limit_scenarios(),
    **users_scenarios(V1),
    **health_scenarios("users_service"),
    **catalogue_scenarios(),
    **orders_scenarios(V2),
    **orders_scenarios(V1),
    **health_scenarios("orders_service"),
}


def documented_responses() -> set[Case]:
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


def cases(service: str) -> list[Case]:
    return sorted(case for case in SCENARIOS if case[0] == service)


def case_id(case: Case) -> str:
    return " ".join(map(str, case[1:]))


@pytest.fixture
def callers(token_for: TokenFor, admin_headers: dict[str, str]) -> Callers:
    return Callers(user=token_for, admin=admin_headers)


@pytest.mark.parametrize("case", cases("users_service"), ids=case_id)
async def test_users_service_produces_each_documented_response(
    case: Case, users_client: Client, callers: Callers
) -> None:
    response = await SCENARIOS[case](users_client, callers)
    assert response.status == case[3], await response.text()


@pytest.mark.parametrize("case", cases("orders_service"), ids=case_id)
async def test_orders_service_produces_each_documented_response(
    case: Case, orders_client: Client, callers: Callers
) -> None:
    response = await SCENARIOS[case](orders_client, callers)
    assert response.status == case[3], await response.text()
