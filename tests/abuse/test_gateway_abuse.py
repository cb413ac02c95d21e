"""The abuse table, gateway side (issue 14): what one client, or a buggy one, can send to the gateway,
run against the real processes. Each test attacks, checks the attacker's answer, and then checks a
bystander: another user's order still ends APPROVED within a deadline.

Where an attack needs many client addresses, the gateway trusts the test as a proxy in front of it
(TRUSTED_PROXIES) and the test names the client in X-Forwarded-For, as a load balancer would.
"""

import asyncio
import uuid
from collections.abc import Mapping

import aiohttp
import pytest

from devstack.waiting import eventually
from gateway.edge import MAX_HEADER_COUNT
from shared.http import MAX_JSON_DEPTH
from tests.abuse.clients import (
    BYSTANDER_DEADLINE,
    aborted_upload,
    assert_bystander_served,
    raw_connection,
    request_head,
    seconds_until_closed_while_trickling_the_head,
    trickled_upload,
)
from tests.e2e.api import PASSWORD, User, final_order, get_order, new_user, place_order
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.saga_checker import assert_invariants_once_quiet

pytestmark = pytest.mark.e2e

# A circuit that opens stays open long enough for the test to see it.
VISIBLE_CIRCUITS = {"CIRCUIT_FAILURE_THRESHOLD": "5", "CIRCUIT_OPEN_SECONDS": "60"}
BEHIND_A_PROXY = {"TRUSTED_PROXIES": "127.0.0.1/32"}


def registration(prefix: str = "x") -> dict[str, str]:
    return {"email": f"{prefix}-{uuid.uuid4().hex[:10]}@example.com", "name": "X", "password": PASSWORD}


async def assert_every_route_served(http: aiohttp.ClientSession, stack: Stack, bystander: User) -> None:
    """Both upstreams' routes answer normally, and the gateway reports both ready."""
    async with http.post(f"{stack.url}/api/v2/users", json=registration("after")) as response:
        assert response.status == 201, await response.text()
    async with http.get(f"{stack.url}/api/v2/users/me", headers=bystander.headers) as response:
        assert response.status == 200, await response.text()
    async with http.get(f"{stack.url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {"users_service": "ok", "orders_service": "ok"}
    await assert_bystander_served(http, stack.url, bystander)


async def test_aborted_uploads_never_open_a_circuit(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: the gateway streamed the body to the service, so the client's reset failed the
    # upstream call, which counted against the circuit; 60 of them opened both circuits, and every
    # client got 503 for CIRCUIT_OPEN_SECONDS.
    stack = await fresh_stack(gateway={**VISIBLE_CIRCUITS, **BEHIND_A_PROXY})
    bystander = await new_user(http, stack.url)
    attacker = await new_user(http, stack.url)
    # From an address of its own: its uploads count against its own rate limits, as they should.
    elsewhere = {"X-Forwarded-For": "203.0.113.66"}
    for _ in range(60):
        await aborted_upload(stack.url, "/api/v2/users", elsewhere)
        await aborted_upload(
            stack.url, "/api/v2/orders", {**elsewhere, "Authorization": attacker.headers["Authorization"]}
        )
    await assert_every_route_served(http, stack, bystander)
    await assert_invariants_once_quiet(stack)


async def test_slow_uploads_are_cut_off_and_never_open_a_circuit(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: a body trickling in for longer than UPSTREAM_TIMEOUT timed the upstream call out (504),
    # and counted against the circuit. Now the body must arrive within REQUEST_BODY_TIMEOUT (408),
    # before any upstream call.
    stack = await fresh_stack(
        gateway={**VISIBLE_CIRCUITS, "UPSTREAM_TIMEOUT": "2", "REQUEST_BODY_TIMEOUT": "1"}
    )
    bystander = await new_user(http, stack.url)
    attacker = await new_user(http, stack.url)
    auth = {"Authorization": attacker.headers["Authorization"]}
    answers = await asyncio.gather(
        *(trickled_upload(stack.url, "/api/v2/users", {}, seconds=6) for _ in range(6)),
        *(trickled_upload(stack.url, "/api/v2/orders", auth, seconds=6) for _ in range(6)),
    )
    assert answers == [408] * 12
    await assert_every_route_served(http, stack, bystander)


async def test_a_request_head_that_trickles_in_or_swells_is_cut_off(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: aiohttp's keep-alive timer (75 s by default) was the only limit on a request head
    # trickling in, and its parser held up to 400 headers of 72 KiB each; now HEADER_TIMEOUT and
    # limits just above the gateway's own.
    stack = await fresh_stack(gateway={"HEADER_TIMEOUT": "2"})
    bystander = await new_user(http, stack.url)
    held = await asyncio.gather(
        *(seconds_until_closed_while_trickling_the_head(stack.url, give_up_after=10) for _ in range(50))
    )
    assert all(seconds is not None and seconds < 5 for seconds in held), held
    # Just above the gateway's own limits (8,192 bytes a header, 100 headers), the parser refuses a
    # head itself: it never holds one much larger than the gateway would accept.
    swollen = [
        {"X-Padding": "a" * (8192 + 2048)},
        {f"X-Padding-{n}": "a" for n in range(2 * MAX_HEADER_COUNT)},
    ]
    for headers in swollen:
        async with raw_connection(stack.url) as (reader, writer):
            writer.write(request_head("GET", "/api/v2/orders", headers))
            status_line = await asyncio.wait_for(reader.readline(), BYSTANDER_DEADLINE)
            assert status_line.split()[1] == b"400", status_line  # refused by the parser itself
            assert await asyncio.wait_for(reader.read(), BYSTANDER_DEADLINE)  # the rest, then closed
    await assert_bystander_served(http, stack.url, bystander)


async def test_one_service_down_leaves_the_other_services_routes_in_rotation(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: /readyz failed when any upstream was down, so an orchestrator took every gateway
    # replica out, and the routes of the service still up went down with them.
    stack = await fresh_stack(gateway=VISIBLE_CIRCUITS)
    admin = stack.keys.admin_headers()
    bystander = await new_user(http, stack.url)
    order = await place_order(http, stack.url, bystander, 1_000, admin=admin)
    assert (await final_order(http, stack.url, bystander, order["id"]))["status"] == "APPROVED"
    assert await stack.users.stop() == 0
    async with http.get(f"{stack.url}/readyz") as response:
        assert response.status == 200  # still in rotation
        assert (await response.json())["checks"] == {"users_service": "unavailable", "orders_service": "ok"}
    assert (await get_order(http, stack.url, bystander, order["id"]))["status"] == "APPROVED"
    pending = await place_order(http, stack.url, bystander, 1_000, admin=admin)  # orders_service takes it
    async with http.get(f"{stack.url}/api/v2/users/me", headers=bystander.headers) as response:
        assert response.status in {502, 503}  # users_service's own routes say it is away
    await stack.start("users_service")
    decided = await final_order(http, stack.url, bystander, pending["id"], within=BYSTANDER_DEADLINE)
    assert decided["status"] == "APPROVED"

    async def both_ready() -> bool:
        async with http.get(f"{stack.url}/readyz") as response:
            return bool((await response.json())["checks"] == {"users_service": "ok", "orders_service": "ok"})

    await eventually(both_ready, within=BYSTANDER_DEADLINE, what="users_service reported ready again")


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 255, 999, 1_000, 1_022])
async def test_deeply_nested_json_in_any_field_is_a_400_problem(
    stack: Stack, http: aiohttp.ClientSession, depth: int
) -> None:
    # Before: 1,000 levels inside a string field answered 500 (8 of 8 tries): orjson parses up to
    # 1,024 levels, and the NUL-character check recursed until Python's recursion limit.
    bystander = await new_user(http, stack.url)
    json = {"Content-Type": "application/json"}
    admin = stack.keys.admin_headers()
    bodies = [
        (
            "POST",
            "/api/v2/users",
            {},
            f'{{"email": "a@example.com", "name": {nested(depth)}, "password": "{PASSWORD}"}}',
        ),
        (
            "POST",
            "/api/v2/users",
            {},
            f'{{"email": "a@example.com", "name": "A", "password": "{PASSWORD}", "x": {nested(depth)}}}',
        ),
        ("POST", "/api/v2/auth/token", {}, f'{{"email": {nested(depth)}, "password": "{PASSWORD}"}}'),
        (
            "POST",
            "/api/v2/orders",
            bystander.headers,
            f'{{"items": [{{"sku": {nested(depth)}, "quantity": 1}}]}}',
        ),
        ("POST", "/api/v2/orders", bystander.headers, f'{{"items": {nested(depth)}}}'),
        # Version 1's order, which still carries a price.
        (
            "POST",
            "/api/orders",
            bystander.headers,
            f'{{"items": [{{"sku": "MUG-01", "quantity": 1, "unit_price_cents": {nested(depth)}}}]}}',
        ),
        (
            "PUT",
            "/api/v2/products/NESTED",
            admin,
            f'{{"name": {nested(depth)}, "price_cents": 1, "active": true}}',
        ),
        (
            "PUT",
            f"/api/v2/users/{bystander.id}/credit-limit",
            admin,
            f'{{"credit_limit_cents": {nested(depth)}}}',
        ),
    ]
    for method, path, headers, body in bodies:
        async with http.request(
            method, f"{stack.url}{path}", data=body, headers={**json, **headers}
        ) as response:
            assert response.status == 400, (path, depth, await response.text())
            assert response.content_type == "application/problem+json"
    await assert_bystander_served(http, stack.url, bystander)


async def test_a_url_cannot_write_to_the_console_log(stack: Stack, http: aiohttp.ClientSession) -> None:
    # Before: the console log printed the decoded path as it came, so %0a started a forged line
    # and %1b[...] reached the terminal as an escape sequence.
    bystander = await new_user(http, stack.url)
    marker = uuid.uuid4().hex[:8]
    forged = f"%0a12:00:00.000%20gateway%20%20%20%20%20%20%20%20INF%20forged-{marker}%1b[2J%1b[31m%e2%80%ae"
    async with http.get(f"{stack.url}/api/{forged}") as response:
        assert response.status == 404
    async with http.get(f"{stack.url}/api/v2/orders/{forged}", headers=bystander.headers) as response:
        assert response.status == 404

    async def both_logged() -> list[str] | None:
        lines = [line for line in stack.gateway.log_text().splitlines() if f"forged-{marker}" in line]
        return lines if len(lines) >= 2 else None

    written = await eventually(both_logged, what="the gateway logged both requests")
    assert len(written) == 2, written
    for line in written:
        assert not line.startswith("12:00:00.000"), line  # no line of the attacker's making
        assert "\\n12:00:00.000 gateway" in line, line
        assert "\\x1b[2J\\x1b[31m\\u202e" in line, line
        assert "\x1b" not in line, line
        assert "\u202e" not in line, line
    await assert_bystander_served(http, stack.url, bystander)


async def test_ipv6_addresses_of_one_64_share_one_allowance(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: each IPv6 address had a bucket of its own, and a host holds a whole /64: 2^64 of them.
    stack = await fresh_stack(gateway={**BEHIND_A_PROXY, "REGISTRATION_RATE_LIMIT_PER_MINUTE": "3"})
    bystander = await new_user(http, stack.url)
    statuses = []
    for n in range(1, 11):
        headers = {"X-Forwarded-For": f"2001:db8:1:2::{n:x}"}
        async with http.post(
            f"{stack.url}/api/v2/users", json=registration("v6"), headers=headers
        ) as response:
            statuses.append(response.status)
    assert statuses == [201] * 3 + [429] * 7
    neighbour = {"X-Forwarded-For": "2001:db8:1:3::1"}  # the next /64: someone else
    async with http.post(f"{stack.url}/api/v2/users", json=registration("v6"), headers=neighbour) as response:
        assert response.status == 201
    await assert_bystander_served(http, stack.url, bystander)


async def test_one_client_cannot_register_without_limit(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    # Before: registration shared the general limit (100 a second), and each one costs users_service a
    # 64 MiB password hash. Now it has its own, like sign-in.
    stack = await fresh_stack(gateway={**BEHIND_A_PROXY, "REGISTRATION_RATE_LIMIT_PER_MINUTE": "5"})
    bystander = await new_user(http, stack.url)
    flood = {"X-Forwarded-For": "203.0.113.66"}

    async def register(prefix: str) -> int:
        async with http.post(
            f"{stack.url}{prefix}/users", json=registration("flood"), headers=flood
        ) as response:
            return response.status

    # Half of them through each API version: one allowance for both, not one each.
    statuses = await asyncio.gather(*(register(("/api", "/api/v2")[n % 2]) for n in range(40)))
    assert sorted(statuses) == [201] * 5 + [429] * 35
    someone_else = {"X-Forwarded-For": "198.51.100.7"}
    async with http.post(f"{stack.url}/api/v2/users", json=registration(), headers=someone_else) as response:
        assert response.status == 201
    await assert_bystander_served(http, stack.url, bystander)


async def test_the_widest_orders_cost_one_catalogue_lookup_and_place_nothing(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    # The most an order body may hold (100 items, each sku 64 characters) is priced with one lookup
    # of at most 100 skus, whatever they are: refused items are each named, and nothing is stored.
    attacker = await new_user(http, stack.url)
    bystander = await new_user(http, stack.url)
    unknown = {"items": [{"sku": f"{index:03d}".ljust(64, "Z"), "quantity": 1000} for index in range(100)]}
    # Version 1's widest: the issue's 1000 pianos at 0.00, a hundred times over.
    free_pianos = {"items": [{"sku": "PIANO", "quantity": 1000, "unit_price_cents": 0}] * 100}
    attacks: list[tuple[str, Mapping[str, object], str]] = [
        ("/api/v2/orders", unknown, "#/items/99/sku"),
        ("/api/orders", free_pianos, "#/items/99/unit_price_cents"),
    ]

    async def attack(path: str, body: Mapping[str, object], last_pointer: str) -> None:
        async with http.post(f"{stack.url}{path}", json=body, headers=attacker.headers) as response:
            assert response.status == 422, await response.text()
            errors = (await response.json())["errors"]
            assert len(errors) == 100
            assert errors[-1]["pointer"] == last_pointer, errors[-1]

    await asyncio.gather(
        *(attack(*what) for what in attacks for _ in range(20)),
        assert_bystander_served(http, stack.url, bystander),
    )
    async with http.get(f"{stack.url}/api/v2/orders", headers=attacker.headers) as response:
        assert (await response.json())["items"] == []
