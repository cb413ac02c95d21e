"""Hostile input through the gateway: SQL metacharacters are plain data (OWASP API8:2023, security
misconfiguration: nothing is ever interpolated into SQL), and deeply nested or oversized JSON is
refused without unbounded work (API4:2023, unrestricted resource consumption)."""

import uuid

import aiohttp
import pytest

from tests.e2e.api import PASSWORD, new_user
from tests.e2e.conftest import Stack

SQL_METACHARACTERS = [
    "'; DROP TABLE users; --",
    '" OR "1"="1',
    "' OR '1'='1' --",
    "1; SELECT pg_sleep(10)",
    "$1 $$ \\x00 %s {0}",
    "Robert'); DELETE FROM orders;--",
]


@pytest.mark.parametrize("payload", SQL_METACHARACTERS)
async def test_api8_sql_metacharacters_in_every_string_field_are_plain_data(
    stack: Stack, http: aiohttp.ClientSession, payload: str
) -> None:
    # name (a user's, a product's): stored and returned exactly; password: hashed, and it signs in;
    # email: refused by the contract's pattern (422), never an error; sku: refused by its pattern.
    email = f"sql-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "name": payload, "password": payload.ljust(8, "x")}
    async with http.post(f"{stack.url}/api/v2/users", json=body) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["name"] == payload
    credentials = {"email": email, "password": payload.ljust(8, "x")}
    async with http.post(f"{stack.url}/api/v2/auth/token", json=credentials) as response:
        assert response.status == 200
    async with http.post(
        f"{stack.url}/api/v2/users", json={"email": payload, "name": "x", "password": PASSWORD}
    ) as response:
        assert response.status == 422
    async with http.post(
        f"{stack.url}/api/v2/auth/token", json={"email": payload, "password": payload}
    ) as response:
        assert response.status == 401
    user = await new_user(http, stack.url)
    order = {"items": [{"sku": payload, "quantity": 1}]}
    async with http.post(f"{stack.url}/api/v2/orders", json=order, headers=user.headers) as response:
        assert response.status == 422
    async with http.get(
        f"{stack.url}/api/v2/orders", params={"status": payload, "cursor": payload}, headers=user.headers
    ) as response:
        assert response.status == 422
    async with http.get(f"{stack.url}/api/v2/orders/{payload}", headers=user.headers) as response:
        assert response.status in {404, 414}  # a metacharacter id names nothing
    admin = stack.keys.admin_headers()
    product = {"name": payload, "price_cents": 1, "active": False}  # not for sale: nobody else sees it
    async with http.put(
        f"{stack.url}/api/v2/products/SQL-{uuid.uuid4().hex[:8]}", json=product, headers=admin
    ) as response:
        assert response.status == 201, await response.text()
        assert (await response.json())["name"] == payload
    async with http.put(f"{stack.url}/api/v2/products/{payload}", json=product, headers=admin) as response:
        # Refused by the sku's pattern (422), or, with braces, by the route's: it matches none (404).
        assert response.status in {404, 422}
    async with http.get(f"{stack.url}/api/v2/products/{payload}") as response:
        assert response.status == 404  # a metacharacter sku names nothing: none was made


async def test_api8_a_nul_character_in_any_string_is_a_field_error_not_a_database_error(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # Valid JSON, but no Postgres text column can hold U+0000: found by the contract fuzzer as a 500.
    email = f"nul-{uuid.uuid4().hex[:8]}@example.com"
    async with http.post(
        f"{stack.url}/api/v2/users", json={"email": email, "name": "Ada\u0000", "password": PASSWORD}
    ) as response:
        assert response.status == 422
        assert (await response.json())["errors"] == [
            {"pointer": "#/name", "detail": "must not contain the NUL character (U+0000)"}
        ]
    async with http.post(
        f"{stack.url}/api/v2/auth/token", json={"email": "ada\u0000@example.com", "password": PASSWORD}
    ) as response:
        assert response.status == 422
        assert [error["pointer"] for error in (await response.json())["errors"]] == ["#/email"]
    # The refused registration changed nothing: the email is still free.
    async with http.post(
        f"{stack.url}/api/v2/users", json={"email": email, "name": "Ada", "password": PASSWORD}
    ) as response:
        assert response.status == 201


async def test_api4_deeply_nested_json_is_refused_cheaply(stack: Stack, http: aiohttp.ClientSession) -> None:
    user = await new_user(http, stack.url)
    nested = b'{"items": ' + b"[" * 5_000 + b"]" * 5_000 + b"}"
    async with http.post(
        f"{stack.url}/api/v2/orders",
        data=nested,
        headers={**user.headers, "Content-Type": "application/json"},
    ) as response:
        assert response.status == 400  # the parser's depth limit, not a stack overflow
        assert response.content_type == "application/problem+json"
    async with http.get(f"{stack.url}/readyz") as response:
        assert response.status == 200  # and everything still stands


async def test_api4_an_oversized_body_is_refused_before_it_is_read(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    huge = b'{"items": [' + b'{"sku": "BOOK-42", "quantity": 1},' * 20_000 + b"]}"
    user = await new_user(http, stack.url)
    async with http.post(
        f"{stack.url}/api/v2/orders", data=huge, headers={**user.headers, "Content-Type": "application/json"}
    ) as response:
        assert response.status == 413
