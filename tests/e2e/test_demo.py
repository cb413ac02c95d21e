"""`make demo` against the running processes: `python -m demo` as a user runs it, its table read back.

Two runs at once, against the same system: each has ids and emails of its own, each finds its own
dead letter while the other one is reading the same queue, and the system they leave is consistent.
"""

import asyncio
import re
import uuid
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
from aiohttp import web

from shared.api_versions import DEPRECATED
from shared.dlq import list_dead_letters
from shared.events import CreditLimitChanged
from tests.e2e.conftest import Stack
from tests.e2e.saga_checker import assert_invariants_once_quiet
from tests.support import run_python, serving

DEMO_DEADLINE = 90.0
MONEY = r"\d+\.\d\d"
USER = "user [0-9a-f]{8}"
ORDER = "order [0-9a-f]{8} PENDING"
# What every answer of version 1 carries, values included (shared/api_versions.py).
DEPRECATION = re.escape(
    f"Deprecation {DEPRECATED.headers()['Deprecation']}, Sunset {DEPRECATED.headers()['Sunset']}, "
    f"Link <{DEPRECATED.migration_note}>"
)
# Each step of the scenario, in order: (step, request, outcome), as patterns on the cells. The users
# get the policy's limit (NEW_USER_CREDIT_LIMIT_CENTS, 1000.00 by default); the orders name seeded
# products (orders_service/migrations/004_products.sql), which orders_service prices.
EXPECTED_ROWS = [
    (
        "The system is up",
        "GET /readyz, AMQP connect",
        "ready: gateway, users_service, orders_service, broker",
    ),
    (
        "Browse the catalogue",
        "GET /api/v2/products",
        # Other tests on the same stack add products of their own: the demo's are among them.
        rf"200 OK: \d+ products on sale, from \S+ at {MONEY} to \S+ at {MONEY}; no token needed",
    ),
    ("Register Alice", "POST /api/v2/users", rf"201 Created: {USER}, limit 1000.00 \(the policy's\)"),
    ("Register Bob", "POST /api/v2/users", rf"201 Created: {USER}, limit 1000.00 \(the policy's\)"),
    ("Alice signs in", "POST /api/v2/auth/token", r"200 OK: a Bearer token, valid \d+ s"),
    ("Bob signs in", "POST /api/v2/auth/token", r"200 OK: a Bearer token, valid \d+ s"),
    (
        "Alice orders 2 BOOK-42, 1 PEN-01",
        "POST /api/v2/orders",
        rf"202 Accepted: {ORDER}, 2 x 12.50 \+ 1 x 24.50 = 49.50",
    ),
    (
        r"\.\.\.the saga decides",
        r"GET /api/v2/orders/\{id\}, polled",
        "APPROVED: credit used 49.50 of 1000.00",
    ),
    ("Bob orders 1 PIANO", "POST /api/v2/orders", rf"202 Accepted: {ORDER}, 1 x 4500.00 = 4500.00"),
    (r"\.\.\.above his 1000.00 limit", r"GET /api/v2/orders/\{id\}, polled", "REJECTED: insufficient_credit"),
    ("Alice orders 2 NOTEBOOK-A5", "POST /api/v2/orders", rf"202 Accepted: {ORDER}, 2 x 15.00 = 30.00"),
    (r"\.\.\.the saga decides", r"GET /api/v2/orders/\{id\}, polled", "APPROVED: credit used 49.50 -> 79.50"),
    ("Alice cancels it", r"POST /api/v2/orders/\{id\}/cancel", "202 Accepted: CANCELLED"),
    (r"\.\.\.her credit is released", "GET /api/v2/users/me, polled", "credit used 79.50 -> 49.50"),
    # The admin story: made by the operator's command, the only way there is.
    (
        "Register Carol, to be an admin",
        "POST /api/v2/users",
        rf"201 Created: {USER}, limit 1000.00 \(the policy's\)",
    ),
    (
        "An operator makes Carol an admin",
        "python -m users_service.admin grant",
        r"granted admin: carol-[0-9a-f]{8}@example.com \(effective from their next sign-in\)",
    ),
    ("Carol signs in", "POST /api/v2/auth/token", "200 OK: a Bearer token, roles: admin"),
    (
        "Bob tries to raise his own limit",
        r"PUT /api/v2/users/\{id\}/credit-limit",
        r"403 Forbidden: This operation needs the admin role, which your access token does not grant\.",
    ),
    (
        "Carol raises Bob's limit",
        r"PUT /api/v2/users/\{id\}/credit-limit",
        "200 OK: Bob's limit 1000.00 -> 5000.00",
    ),
    (
        r"\.\.\.on the flow page",
        "GET /flow/events",
        "users.credit.limit_changed from users_service: 1000.00 -> 5000.00",
    ),
    (
        r"\.\.\.and takes it back",
        "python -m users_service.admin revoke",
        r"revoked admin: carol-[0-9a-f]{8}@example.com \(effective from their next sign-in\)",
    ),
    ("Bob orders 1 PIANO again", "POST /api/v2/orders", rf"202 Accepted: {ORDER}, 1 x 4500.00 = 4500.00"),
    (
        r"\.\.\.within his new limit",
        r"GET /api/v2/orders/\{id\}, polled",
        "APPROVED: credit used 4500.00 of 5000.00",
    ),
    # Version 1, deprecated: still served, and told so; its prices must be the catalogue's.
    (
        "Alice orders on version 1",
        "POST /api/orders",
        rf"202 Accepted: {ORDER}, 1 x 9.99 = 9.99; {DEPRECATION}",
    ),
    (
        r"\.\.\.at a price of her own",
        "POST /api/orders",
        r"422 Validation failed: #/items/0/unit_price_cents must be the catalogue's price, 999",
    ),
    (
        r"\.\.\.the saga decides",
        r"GET /api/v2/orders/\{id\}, polled",
        "APPROVED, read on version 2: credit used 49.50 -> 59.49",
    ),
    (
        "A bad producer's event",
        "AMQP publish to events",
        r"confirmed: orders.order.created [0-9a-f]{8}, total_cents -50000 \(would give Alice 500.00\)",
    ),
    (
        "users_service refuses it at once",
        "get users_service.dlq, polled",
        r"dead-lettered at once \(invalid\): orders.order.created v1: data.total_cents must be at least 0",
    ),
    ("Replay it", "dlq replay --id [0-9a-f]{8}", "back on the users_service queue, as a first attempt"),
    (
        r"\.\.\.it is still poison",
        "get users_service.dlq, polled",
        r"dead-lettered again \(invalid\): replay is for messages whose cause has been fixed, "
        "and this event is wrong for good",
    ),
    ("Alice's credit is untouched", "GET /api/v2/users/me", "credit used still 59.49"),
]
STORIES = ("alice", "bob", "carol", "approved", "rejected", "cancelled", "limit", "raised", "v1", "poison")


async def run_demo(*arguments: str, env: Mapping[str, str] | None = None) -> tuple[int, str, str]:
    """Run `python -m demo` as `make demo` does, with `env` added to the environment; its exit code,
    stdout and stderr."""
    # Wide enough that no cell wraps, version 1's deprecation headers included: one line per row.
    finished = await run_python(
        "-m", "demo", *arguments, within=DEMO_DEADLINE, env={"COLUMNS": "400", **(env or {})}
    )
    return finished.returncode, finished.stdout, finished.stderr


def table_rows(output: str) -> list[list[str]]:
    """The table's rows as [number, step, request, outcome, ms]: cells are two or more spaces apart."""
    return [
        re.split(r"\s{2,}", line.strip()) for line in output.splitlines() if re.match(r"^\s*\d+\s{2}\S", line)
    ]


def assert_the_story_is_told(output: str) -> None:
    rows = table_rows(output)
    assert len(rows) == len(EXPECTED_ROWS), output
    for number, (row, (step, request, outcome)) in enumerate(zip(rows, EXPECTED_ROWS, strict=True), 1):
        assert len(row) == 5, f"row {number}: {row}"
        assert row[0] == str(number)
        assert re.fullmatch(step, row[1]), f"row {number}: step {row[1]!r}"
        assert re.fullmatch(request, row[2]), f"row {number}: request {row[2]!r}"
        assert re.fullmatch(outcome, row[3]), f"row {number}: outcome {row[3]!r}\n{output}"
        assert row[4].isdigit(), f"row {number}: elapsed {row[4]!r}"
    assert f"All {len(EXPECTED_ROWS)} steps ended as expected." in output


def poison_event_id(output: str) -> str:
    match = re.search(r"demo-[0-9a-f]{8}-poison\s+event ([0-9a-f-]{36}), left in users_service\.dlq", output)
    assert match, output
    return match.group(1)


async def test_the_demo_tells_its_story_against_the_running_system(stack: Stack) -> None:
    arguments = ("--gateway-url", stack.url, "--rabbitmq-url", stack.broker.operator_url)
    # As `python -m devstack demo` gives it: users_service's database, for the operator's command.
    env = {"DATABASE_URL": stack.env["users_service"]["DATABASE_URL"]}
    runs = await asyncio.gather(run_demo(*arguments, env=env), run_demo(*arguments, env=env))
    for code, out, err in runs:
        assert code == 0, f"{out}\n{err}"
        assert err == ""
        assert_the_story_is_told(out)
        run = re.findall(r"demo-[0-9a-f]{8}", out)[0]
        assert f"Watch this run on the flow page: {stack.url}/flow?filter={run}\n" in out
        for story in STORIES:
            assert re.search(rf"^  demo-[0-9a-f]{{8}}-{story} ", out, re.MULTILINE), story

    first, second = (out for _, out, _ in runs)
    assert re.findall(r"demo-[0-9a-f]{8}", first)[0] != re.findall(r"demo-[0-9a-f]{8}", second)[0]
    # The poison events stay dead letters, there for `make dlq` to show.
    letters = {
        letter.message_id: letter for letter in await list_dead_letters(stack.rabbitmq_url, "users_service")
    }
    for out in (first, second):
        assert letters[poison_event_id(out)].reason == "invalid"
    await assert_the_admin_story_happened(stack, [first, second])
    await assert_invariants_once_quiet(stack)


async def assert_the_admin_story_happened(stack: Stack, outputs: list[str]) -> None:
    """In users_service's database: each run's Bob has the limit Carol gave him, announced once as
    users.credit.limit_changed under the run's story, and Carol no longer holds the role the
    operator granted her for the run."""
    users = await asyncpg.connect(stack.admin_dsn("users_service"))
    try:
        for out in outputs:
            run = re.findall(r"demo-([0-9a-f]{8})", out)[0]
            bob, carol = await users.fetch(
                """
                SELECT email, credit_limit_cents, roles FROM users
                WHERE email = ANY($1::text[]) ORDER BY email
                """,
                [f"bob-{run}@example.com", f"carol-{run}@example.com"],
            )
            assert bob["credit_limit_cents"] == 500_000
            assert carol["roles"] == [], "the demo's admin keeps the role after the demo"
            changes = await users.fetch(
                """
                SELECT body::jsonb -> 'data' AS data FROM outbox
                WHERE event_type = $1 AND body::jsonb ->> 'correlationid' = $2
                """,
                CreditLimitChanged.TYPE,
                f"demo-{run}-limit",
            )
            assert [orjson.loads(change["data"])["credit_limit_cents"] for change in changes] == [500_000]
    finally:
        await users.close()


def gateway_that_rejects_every_order() -> web.Application:
    """A stand-in gateway whose saga decides differently from the real one: REJECTED, always."""
    orders: dict[str, dict[str, Any]] = {}

    async def ready(_: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ready", "checks": {"users_service": "ok", "orders_service": "ok"}}
        )

    async def products(_: web.Request) -> web.Response:
        items = [
            {"sku": sku, "name": sku, "price_cents": price, "active": True}
            for sku, price in (("BOOK-42", 1250), ("PEN-01", 2450), ("NOTEBOOK-A5", 1500), ("BOOK-1984", 999))
        ]
        return web.json_response({"items": [*items, {**items[0], "sku": "PIANO"}], "next_cursor": None})

    async def register(_: web.Request) -> web.Response:
        return web.json_response({"id": str(uuid.uuid4()), "credit_limit_cents": 100_000}, status=201)

    async def sign_in(_: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "token_type": "Bearer", "expires_in": 900})

    async def place(request: web.Request) -> web.Response:
        order_id = str(uuid.uuid4())
        orders[order_id] = {"id": order_id, "status": "REJECTED", "rejection_reason": "insufficient_credit"}
        items = [{**item, "unit_price_cents": 100} for item in (await request.json())["items"]]
        total = sum(item["quantity"] * 100 for item in items)
        placed = {
            "id": order_id,
            "status": "PENDING",
            "rejection_reason": None,
            "items": items,
            "total_cents": total,
        }
        return web.json_response(placed, status=202)

    async def get(request: web.Request) -> web.Response:
        return web.json_response(orders[request.match_info["id"]])

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_get("/api/v2/products", products)
    app.router.add_post("/api/v2/users", register)
    app.router.add_post("/api/v2/auth/token", sign_in)
    app.router.add_post("/api/v2/orders", place)
    app.router.add_get("/api/v2/orders/{id}", get)
    return app


async def test_an_outcome_other_than_the_expected_one_fails_the_demo(rabbitmq_url: str) -> None:
    async with serving(gateway_that_rejects_every_order()) as url:
        code, out, err = await run_demo(
            "--gateway-url", url, "--rabbitmq-url", rabbitmq_url, "--timeout", "5"
        )
    assert code == 1, out
    [failed] = [row for row in table_rows(out) if row[3].startswith("FAILED")]
    assert failed[:4] == [
        "8",
        "...the saga decides",
        "GET /api/v2/orders/{id}, polled",
        "FAILED: REJECTED (insufficient_credit), expected APPROVED",
    ]
    assert table_rows(out)[-1] == failed, "the demo stops at the first failure"
    assert (
        "The demo stopped at step 8 (...the saga decides): REJECTED (insufficient_credit), expected APPROVED"
        in err
    )
