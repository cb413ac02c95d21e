"""`make demo` against the running processes: `python -m demo` as a user runs it, its table read back.

Two runs at once, against the same system: each has ids and emails of its own, each finds its own
dead letter while the other one is reading the same queue, and the system they leave is consistent.
"""

import asyncio
import os
import re
import sys
import uuid
from typing import Any

from aiohttp import web

from devstack.processes import ROOT
from shared.dlq import list_dead_letters
from tests.e2e.conftest import Stack
from tests.e2e.saga_checker import assert_invariants_once_quiet
from tests.support import serving

DEMO_DEADLINE = 90.0
MONEY = r"\d+\.\d\d"
# Each step of the scenario, in order: (step, request, outcome), as patterns on the cells.
EXPECTED_ROWS = [
    (
        "The system is up",
        "GET /readyz, AMQP connect",
        "ready: gateway, users_service, orders_service, broker",
    ),
    ("Register Alice, limit 1000.00", "POST /api/users", "201 Created: user [0-9a-f]{8}"),
    ("Register Bob, limit 50.00", "POST /api/users", "201 Created: user [0-9a-f]{8}"),
    ("Alice signs in", "POST /api/auth/token", r"200 OK: a Bearer token, valid \d+ s"),
    ("Bob signs in", "POST /api/auth/token", r"200 OK: a Bearer token, valid \d+ s"),
    (r"Alice orders a keyboard \(120.00\)", "POST /api/orders", "202 Accepted: order [0-9a-f]{8} PENDING"),
    (r"\.\.\.the saga decides", r"GET /api/orders/\{id\}, polled", "APPROVED: credit used 120.00 of 1000.00"),
    (r"Bob orders a monitor \(250.00\)", "POST /api/orders", "202 Accepted: order [0-9a-f]{8} PENDING"),
    (r"\.\.\.above his 50.00 limit", r"GET /api/orders/\{id\}, polled", "REJECTED: insufficient_credit"),
    (r"Alice orders two cables \(30.00\)", "POST /api/orders", "202 Accepted: order [0-9a-f]{8} PENDING"),
    (r"\.\.\.the saga decides", r"GET /api/orders/\{id\}, polled", "APPROVED: credit used 120.00 -> 150.00"),
    ("Alice cancels it", r"POST /api/orders/\{id\}/cancel", "202 Accepted: CANCELLED"),
    (r"\.\.\.her credit is released", "GET /api/users/me, polled", "credit used 150.00 -> 120.00"),
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
    ("Alice's credit is untouched", "GET /api/users/me", "credit used still 120.00"),
]


async def run_demo(*arguments: str) -> tuple[int, str, str]:
    """Run `python -m demo` as `make demo` does; its exit code, stdout and stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo",
        *arguments,
        cwd=ROOT,
        # Wide enough that no cell wraps: one line per row.
        env={**os.environ, "COLUMNS": "250"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), DEMO_DEADLINE)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the demo took more than {DEMO_DEADLINE} s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


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
    runs = await asyncio.gather(run_demo(*arguments), run_demo(*arguments))
    for code, out, err in runs:
        assert code == 0, f"{out}\n{err}"
        assert err == ""
        assert_the_story_is_told(out)
        run = re.findall(r"demo-[0-9a-f]{8}", out)[0]
        assert f"Watch this run on the flow page: {stack.url}/flow?filter={run}\n" in out
        for story in ("alice", "bob", "approved", "rejected", "cancelled", "poison"):
            assert re.search(rf"^  demo-[0-9a-f]{{8}}-{story} ", out, re.MULTILINE), story

    first, second = (out for _, out, _ in runs)
    assert re.findall(r"demo-[0-9a-f]{8}", first)[0] != re.findall(r"demo-[0-9a-f]{8}", second)[0]
    # The poison events stay dead letters, there for `make dlq` to show.
    letters = {
        letter.message_id: letter for letter in await list_dead_letters(stack.rabbitmq_url, "users_service")
    }
    for out in (first, second):
        assert letters[poison_event_id(out)].reason == "invalid"
    await assert_invariants_once_quiet(stack)


def gateway_that_rejects_every_order() -> web.Application:
    """A stand-in gateway whose saga decides differently from the real one: REJECTED, always."""
    orders: dict[str, dict[str, Any]] = {}

    async def ready(_: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ready", "checks": {"users_service": "ok", "orders_service": "ok"}}
        )

    async def register(_: web.Request) -> web.Response:
        return web.json_response({"id": str(uuid.uuid4())}, status=201)

    async def sign_in(_: web.Request) -> web.Response:
        return web.json_response({"access_token": "t", "token_type": "Bearer", "expires_in": 900})

    async def place(_: web.Request) -> web.Response:
        order_id = str(uuid.uuid4())
        orders[order_id] = {"id": order_id, "status": "REJECTED", "rejection_reason": "insufficient_credit"}
        return web.json_response({"id": order_id, "status": "PENDING", "rejection_reason": None}, status=202)

    async def get(request: web.Request) -> web.Response:
        return web.json_response(orders[request.match_info["id"]])

    app = web.Application()
    app.router.add_get("/readyz", ready)
    app.router.add_post("/api/users", register)
    app.router.add_post("/api/auth/token", sign_in)
    app.router.add_post("/api/orders", place)
    app.router.add_get("/api/orders/{id}", get)
    return app


async def test_an_outcome_other_than_the_expected_one_fails_the_demo(rabbitmq_url: str) -> None:
    async with serving(gateway_that_rejects_every_order()) as url:
        code, out, err = await run_demo(
            "--gateway-url", url, "--rabbitmq-url", rabbitmq_url, "--timeout", "5"
        )
    assert code == 1, out
    [failed] = [row for row in table_rows(out) if row[3].startswith("FAILED")]
    assert failed[:4] == [
        "7",
        "...the saga decides",
        "GET /api/orders/{id}, polled",
        "FAILED: REJECTED (insufficient_credit), expected APPROVED",
    ]
    assert table_rows(out)[-1] == failed, "the demo stops at the first failure"
    assert (
        "The demo stopped at step 7 (...the saga decides): REJECTED (insufficient_credit), expected APPROVED"
        in err
    )
