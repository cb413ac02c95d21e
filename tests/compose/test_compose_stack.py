"""The whole system as `docker compose up --build` runs it, reached only through the gateway's
published port: the images built from deploy/Dockerfile, the stack started from docker-compose.yml.

What the static check (tests/unit/test_compose.py) cannot see shows here: a file the image lacks, a
host name that does not resolve, a health check that never passes, a start-up race, a restart that
loses an order. Run by `make test-compose` (tests/compose/run.py), which starts and removes the stack.
"""

import asyncio
import collections
import json
import re
import time
import uuid
from typing import Any

import aiohttp
import pytest

from devstack.waiting import eventually
from shared.api_versions import DEPRECATED
from tests.compose.api import api, new_admin, signed_in
from tests.compose.conftest import PROJECT, ROOT, containers, docker_compose
from tests.dead_letter_probes import (
    assert_dead_lettered_after_the_limit,
    assert_every_listing_showed_every_letter,
)
from tests.e2e.api import FINAL, User, final_order, me, new_product, new_user, order_product, set_credit_limit
from users_service.config import UsersConfig

LONG_RUNNING = ("postgres", "rabbitmq", "users_service", "orders_service", "gateway")
APPLICATION = ("users_service", "orders_service", "gateway")
ONE_SHOTS = ("keygen", "broker-setup")
APP_USER = "10001:10001"  # deploy/Dockerfile's USER
# What compose leaves the policy at: every new user's credit limit.
NEW_USER_CREDIT_LIMIT_CENTS: int = UsersConfig.default_of("NEW_USER_CREDIT_LIMIT_CENTS")


@pytest.fixture(scope="module")
async def admin_email(gateway_url: str) -> str:
    """One admin for the module's tests, made by the operator's command in a container of the tools."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        return (await new_admin(http, gateway_url)).email


@pytest.fixture
async def admin(http: aiohttp.ClientSession, gateway_url: str, admin_email: str) -> User:
    """That admin, signed in afresh for each test: a token outlives no test, however long the run."""
    return await signed_in(http, gateway_url, admin_email)


# --- the stack as compose made it ---------------------------------------------------------------


async def test_every_service_is_healthy_and_the_one_shots_ran_once() -> None:
    found = await containers()
    assert set(found) == {*LONG_RUNNING, *ONE_SHOTS}
    for service in LONG_RUNNING:
        state = found[service]["State"]
        assert (state["Status"], state["Health"]["Status"]) == ("running", "healthy"), service
        assert found[service]["RestartCount"] == 0, f"{service} crashed and was restarted"
    for one_shot in ONE_SHOTS:
        state = found[one_shot]["State"]
        assert (state["Status"], state["ExitCode"]) == ("exited", 0), one_shot


async def test_restart_policies_users_and_named_volumes_are_as_declared() -> None:
    found = await containers()
    for service in LONG_RUNNING:
        assert found[service]["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped", service
    for one_shot in ONE_SHOTS:
        assert found[one_shot]["HostConfig"]["RestartPolicy"]["Name"] == "no", one_shot
    for service in (*APPLICATION, *ONE_SHOTS):
        assert found[service]["Config"]["User"] == APP_USER, f"{service} does not run as the app user"
    data = {"postgres": "/var/lib/postgresql/data", "rabbitmq": "/var/lib/rabbitmq"}
    for service, path in data.items():
        mounts = {mount["Destination"]: mount for mount in found[service]["Mounts"]}
        assert mounts[path]["Type"] == "volume", f"{service} keeps its data outside a named volume"
        assert mounts[path]["Name"] == f"{PROJECT}_{service}-data"


async def test_only_the_gateway_and_the_management_ui_are_published() -> None:
    found = await containers()
    published = {
        service: sorted(port for port, bindings in container["NetworkSettings"]["Ports"].items() if bindings)
        for service, container in found.items()
        if service in LONG_RUNNING
    }
    assert published == {
        "postgres": [],
        "rabbitmq": ["15672/tcp"],
        "users_service": [],
        "orders_service": [],
        "gateway": ["8080/tcp"],
    }
    management = found["rabbitmq"]["NetworkSettings"]["Ports"]["15672/tcp"]
    assert {binding["HostIp"] for binding in management} == {"127.0.0.1"}


# --- the API through the published port ---------------------------------------------------------


async def test_readiness_reports_each_upstream(http: aiohttp.ClientSession, gateway_url: str) -> None:
    async with http.get(f"{gateway_url}/readyz") as response:
        assert response.status == 200
        assert (await response.json())["checks"] == {"users_service": "ok", "orders_service": "ok"}
    async with http.get(f"{gateway_url}/healthz") as response:
        assert response.status == 200


async def test_the_walkthrough_catalogue_register_sign_in_order_approved_cancel(
    http: aiohttp.ClientSession, gateway_url: str, admin: User
) -> None:
    async with http.get(f"{api(gateway_url)}/products") as response:  # no token needed to look
        assert response.status == 200, await response.text()
        assert "PIANO" in {product["sku"] for product in (await response.json())["items"]}
    user = await new_user(http, gateway_url)
    account = await me(http, gateway_url, user)
    assert (account["id"], account["credit_limit_cents"]) == (user.id, NEW_USER_CREDIT_LIMIT_CENTS)
    sku = await new_product(http, gateway_url, admin.headers, 1_250)
    order = await order_product(http, gateway_url, user, sku, quantity=2)
    assert (order["status"], order["total_cents"]) == ("PENDING", 2_500), "priced from the catalogue"
    assert order["items"] == [{"sku": sku, "quantity": 2, "unit_price_cents": 1_250}]
    approved = await final_order(http, gateway_url, user, order["id"])
    assert approved["status"] == "APPROVED"
    assert (await me(http, gateway_url, user))["credit_used_cents"] == 2_500
    async with http.get(f"{api(gateway_url)}/orders?status=APPROVED", headers=user.headers) as response:
        assert [listed["id"] for listed in (await response.json())["items"]] == [order["id"]]
    async with http.post(f"{api(gateway_url)}/orders/{order['id']}/cancel", headers=user.headers) as response:
        assert response.status == 202
        assert (await response.json())["status"] == "CANCELLED"

    async def released() -> bool:
        return bool((await me(http, gateway_url, user))["credit_used_cents"] == 0)

    await eventually(released, within=30, what="the cancelled order's credit released")


async def test_bad_requests_get_problems(http: aiohttp.ClientSession, gateway_url: str) -> None:
    async with http.get(f"{api(gateway_url)}/users/me") as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
        assert "WWW-Authenticate" in response.headers
    async with http.get(f"{api(gateway_url)}/nowhere") as response:
        assert response.status == 404
        assert response.content_type == "application/problem+json"
    user = await new_user(http, gateway_url)
    body = {"items": [{"sku": "not valid!", "quantity": 0}]}
    async with http.post(f"{api(gateway_url)}/orders", json=body, headers=user.headers) as response:
        assert response.status == 422
        problem = await response.json()
    assert {entry["pointer"] for entry in problem["errors"]} == {"#/items/0/sku", "#/items/0/quantity"}
    body = {"items": [{"sku": "NOT-IN-THE-CATALOGUE", "quantity": 1}]}
    async with http.post(f"{api(gateway_url)}/orders", json=body, headers=user.headers) as response:
        assert response.status == 422
        problem = await response.json()
    assert problem["errors"] == [{"pointer": "#/items/0/sku", "detail": "is not in the catalogue"}]


async def test_a_request_id_is_in_the_logs_of_every_container_it_crossed(
    http: aiohttp.ClientSession, gateway_url: str
) -> None:
    user = await new_user(http, gateway_url)
    chosen = f"compose-{uuid.uuid4().hex[:12]}"
    async with http.get(
        f"{api(gateway_url)}/users/me", headers={**user.headers, "X-Request-ID": chosen}
    ) as response:
        assert response.status == 200
        assert response.headers["X-Request-ID"] == chosen

    async def logged_by_both() -> bool:
        for service in ("gateway", "users_service"):
            if f"corr={chosen}" not in await docker_compose("logs", "--no-color", service):
                return False
        return True

    await eventually(logged_by_both, within=15, interval=0.5, what="the request id in both containers' logs")


# --- the saga across the containers -------------------------------------------------------------


async def test_approved_rejected_and_cancelled_orders(
    http: aiohttp.ClientSession, gateway_url: str, admin: User
) -> None:
    user = await new_user(http, gateway_url)
    await set_credit_limit(http, gateway_url, admin.headers, user.id, 5_000)
    approved = await order_product(
        http, gateway_url, user, await new_product(http, gateway_url, admin.headers, 3_000)
    )
    assert (await final_order(http, gateway_url, user, approved["id"]))["status"] == "APPROVED"
    too_much = await order_product(
        http, gateway_url, user, await new_product(http, gateway_url, admin.headers, 2_001)
    )
    rejected = await final_order(http, gateway_url, user, too_much["id"])
    assert (rejected["status"], rejected["rejection_reason"]) == ("REJECTED", "insufficient_credit")
    await assert_credit_matches_approved_orders(http, gateway_url, [user])


async def test_an_admin_made_by_the_operator_raises_a_limit_and_the_refused_order_goes_through(
    http: aiohttp.ClientSession, gateway_url: str, admin: User
) -> None:
    user = await new_user(http, gateway_url)
    dear = await new_product(http, gateway_url, admin.headers, NEW_USER_CREDIT_LIMIT_CENTS + 1)
    refused = await final_order(
        http, gateway_url, user, (await order_product(http, gateway_url, user, dear))["id"]
    )
    assert (refused["status"], refused["rejection_reason"]) == ("REJECTED", "insufficient_credit")
    raise_it = {"credit_limit_cents": NEW_USER_CREDIT_LIMIT_CENTS + 1}
    async with http.put(
        f"{api(gateway_url)}/users/{user.id}/credit-limit", json=raise_it, headers=user.headers
    ) as response:
        assert response.status == 403, "only an admin changes a credit limit"
        assert (await response.json())["type"] == "urn:eda-reference:problem:forbidden"
    changed = await set_credit_limit(
        http, gateway_url, admin.headers, user.id, NEW_USER_CREDIT_LIMIT_CENTS + 1
    )
    assert changed["credit_limit_cents"] == NEW_USER_CREDIT_LIMIT_CENTS + 1
    again = await final_order(
        http, gateway_url, user, (await order_product(http, gateway_url, user, dear))["id"]
    )
    assert again["status"] == "APPROVED"
    await assert_credit_matches_approved_orders(http, gateway_url, [user])


async def test_version_1_still_answers_and_says_on_every_answer_that_it_is_deprecated(
    http: aiohttp.ClientSession, gateway_url: str, admin: User
) -> None:
    user = await new_user(http, gateway_url)
    sku = await new_product(http, gateway_url, admin.headers, 999)
    placed = {"items": [{"sku": sku, "quantity": 1, "unit_price_cents": 999}]}
    async with http.post(f"{gateway_url}/api/orders", json=placed, headers=user.headers) as response:
        assert response.status == 202, await response.text()
        assert response.headers["Location"].startswith("/api/orders/")
        assert {name: response.headers.get(name) for name in DEPRECATED.headers()} == DEPRECATED.headers()
        order = await response.json()
    wrong = {"items": [{"sku": sku, "quantity": 1, "unit_price_cents": 998}]}
    async with http.post(f"{gateway_url}/api/orders", json=wrong, headers=user.headers) as response:
        assert response.status == 422
        assert [error["pointer"] for error in (await response.json())["errors"]] == [
            "#/items/0/unit_price_cents"
        ]
        assert {name: response.headers.get(name) for name in DEPRECATED.headers()} == DEPRECATED.headers()
    # The gateway's own refusals too: no token, no service asked.
    async with http.get(f"{gateway_url}/api/users/me") as response:
        assert response.status == 401
        assert {name: response.headers.get(name) for name in DEPRECATED.headers()} == DEPRECATED.headers()
    async with http.get(f"{api(gateway_url)}/users/me", headers=user.headers) as response:
        assert response.status == 200
        assert not {"Deprecation", "Sunset"} & set(response.headers), "version 2 is not deprecated"
    # One system behind both versions: the order placed on version 1 is read on version 2.
    assert (await final_order(http, gateway_url, user, order["id"]))["status"] == "APPROVED"


async def test_make_demo_compose_tells_its_whole_story_from_the_tools_container(gateway_url: str) -> None:
    """As `make demo-compose` runs it: in a container of the tools, inside the compose network, with
    the tools' broker user and users_service's database (for the operator's command that makes the
    demo's admin)."""
    output = await docker_compose(
        "run",
        "--rm",
        "--no-deps",
        "-T",
        "-e",
        "GATEWAY_URL=http://gateway:8080",
        "-e",
        f"FLOW_URL={gateway_url}/flow",
        # Wide enough that no cell wraps: one line per row, to be read back.
        "-e",
        "COLUMNS=400",
        "tools",
        "python",
        "-m",
        "demo",
        within=180,
    )
    steps = re.search(r"All (\d+) steps ended as expected\.", output)
    assert steps, output
    assert "An operator makes Carol an admin" in output
    assert "users.credit.limit_changed from users_service" in output


async def test_fifty_concurrent_orders_never_over_reserve(
    http: aiohttp.ClientSession, gateway_url: str, admin: User
) -> None:
    user = await new_user(http, gateway_url)
    await set_credit_limit(http, gateway_url, admin.headers, user.id, 10_000)
    sku = await new_product(http, gateway_url, admin.headers, 700)
    orders = await asyncio.gather(*(order_product(http, gateway_url, user, sku) for _ in range(50)))
    finals = [await final_order(http, gateway_url, user, order["id"]) for order in orders]
    assert sum(order["status"] == "APPROVED" for order in finals) == 10_000 // 700
    await assert_credit_matches_approved_orders(http, gateway_url, [user])


@pytest.mark.parametrize("service", ["orders_service", "users_service"])
async def test_a_service_restarted_during_a_burst_of_orders_loses_none(
    http: aiohttp.ClientSession, gateway_url: str, service: str, admin: User
) -> None:
    """`docker compose restart` in the middle of a stream of orders: the container gets SIGTERM,
    drains, and starts again. Every order, accepted before, during or after, reaches a final state."""
    users = [await new_user(http, gateway_url) for _ in range(3)]
    sku = await new_product(http, gateway_url, admin.headers, 300)
    started_at = (await containers())[service]["State"]["StartedAt"]
    burst = Burst(http, gateway_url, users, sku)
    placing = asyncio.create_task(burst.run())
    try:
        await eventually(lambda: burst.has_accepted(10), within=30, what="10 orders before the restart")
        await docker_compose("restart", service)
        burst.restarted_at = len(burst.accepted)
        orders = await asyncio.wait_for(placing, timeout=120)
    finally:
        placing.cancel()
    assert (await containers())[service]["State"]["StartedAt"] != started_at, f"{service} was not restarted"
    assert burst.restarted_at is not None
    assert len(orders) > burst.restarted_at >= 10
    print(
        f"\n  {service} restarted mid-burst: {len(orders)} orders accepted,"
        f" {burst.restarted_at} of them before the restart returned; refused meanwhile: {dict(burst.refused)}"
    )
    for order in orders:
        owner = order["owner"]
        assert isinstance(owner, User)
        assert (await final_order(http, gateway_url, owner, str(order["id"]), within=60))["status"] in FINAL
    listed = await assert_credit_matches_approved_orders(http, gateway_url, users)
    # Orders whose 202 the client never saw (a 502 mid-restart) must be decided too, not PENDING.
    assert {str(order["id"]) for order in orders} <= {order["id"] for order in listed}
    assert not [order for order in listed if order["status"] not in FINAL], "orders left undecided"


class Burst:
    """Orders placed round-robin over the users by two clients, at a steady pace, until the restart
    is over and 20 more have been accepted. While the service is away the gateway answers 503 (or
    502 for a request cut off by the shutdown): like any client, try again."""

    DEADLINE = 120.0
    PACE = 0.02  # between one client's requests: a stream of orders, not a flood of retries
    AFTER_RESTART = 20

    def __init__(self, http: aiohttp.ClientSession, url: str, users: list[User], sku: str) -> None:
        self.http, self.url, self.users, self.sku = http, url, users, sku
        self.accepted: list[dict[str, Any]] = []
        self.refused: collections.Counter[int] = collections.Counter()
        self.restarted_at: int | None = None

    async def has_accepted(self, orders: int) -> bool:
        return len(self.accepted) >= orders

    def done(self) -> bool:
        return self.restarted_at is not None and len(self.accepted) >= self.restarted_at + self.AFTER_RESTART

    async def run(self) -> list[dict[str, Any]]:
        give_up_at = time.monotonic() + self.DEADLINE
        await asyncio.gather(*(self._client(give_up_at) for _ in range(2)))
        return self.accepted

    async def _client(self, give_up_at: float) -> None:
        while not self.done():
            assert time.monotonic() < give_up_at, (
                f"{len(self.accepted)} orders accepted in {self.DEADLINE} s; refused: {dict(self.refused)}"
            )
            user = self.users[len(self.accepted) % len(self.users)]
            # Quantities that differ, so that the users' totals do too.
            body = {"items": [{"sku": self.sku, "quantity": 1 + len(self.accepted) % 3}]}
            async with self.http.post(f"{api(self.url)}/orders", json=body, headers=user.headers) as response:
                if response.status == 202:
                    self.accepted.append({**(await response.json()), "owner": user})
                else:
                    assert response.status in {502, 503}, await response.text()
                    self.refused[response.status] += 1
            await asyncio.sleep(self.PACE)


# --- the broker's users ---------------------------------------------------------------------------
# Each process signs in as a user of its own, made by broker-setup. The same probe runs in the local
# suite against a vhost set up the same way (tests/integration/test_broker_setup.py).

PUBLISH_PROBE = ROOT / "tests" / "publish_probe.py"


async def publish_in_the_stack(container: str, *probe: str) -> dict[str, Any]:
    """Run tests/publish_probe.py in the container, as its process signs in to the broker."""
    output = await docker_compose(
        "exec", "-T", container, "python", "-", *probe, stdin=PUBLISH_PROBE.read_bytes(), within=60
    )
    report: dict[str, Any] = json.loads(output.splitlines()[-1])
    assert report["user"] == container, f"{container} signs in as {report['user']}, not as its own user"
    return report


@pytest.mark.parametrize(
    ("container", "probe", "outcome"),
    [
        # The control: its own type, under its own name (the flow page may show it; nothing applies it).
        ("users_service", ["users.user.registered"], "confirmed"),
        # The attack of issue 14: a neighbour's credit answer, which would approve an order.
        ("orders_service", ["users.credit.reserved"], "access refused"),
        ("users_service", ["orders.order.created"], "access refused"),
        ("gateway", ["users.credit.reserved"], "access refused"),  # it publishes nothing
        # Its own type, under another's name: the broker checks the user-id property.
        ("users_service", ["users.credit.reserved", "--user-id", "orders_service"], "precondition failed"),
    ],
)
async def test_a_services_broker_user_cannot_publish_another_services_event_types(
    container: str, probe: list[str], outcome: str
) -> None:
    report = await publish_in_the_stack(container, *probe)
    assert report["outcome"] == outcome, report


# --- dead letters under RabbitMQ 4's delivery limit ---------------------------------------------
# RabbitMQ 4 gives every quorum queue a delivery limit of 20 and counts a message given back (nack with
# requeue, a consumer gone) towards it. The same probes run in the local suite against RabbitMQ 3
# (tests/integration/test_dead_letters.py).

PROBES = ROOT / "tests" / "dead_letter_probes.py"


async def administrator() -> tuple[str, str]:
    """RabbitMQ's administrator, as the stack made it (no process of the system signs in as it)."""
    broker = (await containers())["rabbitmq"]
    environment = dict(entry.split("=", 1) for entry in broker["Config"]["Env"])
    return environment["RABBITMQ_DEFAULT_USER"], environment["RABBITMQ_DEFAULT_PASS"]


async def probe_in_the_stack(*probe: str, environment: dict[str, str] | None = None) -> dict[str, Any]:
    """Run tests/dead_letter_probes.py inside the compose network (AMQP is not published on the host),
    as the administrator (it applies policies and makes queues of its own), in a container of
    broker-setup's: the image holds shared/, the environment has the management API and the
    administrator's credentials, and the probe comes on standard input."""
    user, password = await administrator()
    settings = {"RABBITMQ_URL": f"amqp://{user}:{password}@rabbitmq:5672/", **(environment or {})}
    options = [option for name, value in settings.items() for option in ("-e", f"{name}={value}")]
    output = await docker_compose(
        "run",
        "--rm",
        "--no-deps",
        "-T",
        *options,
        "broker-setup",
        "python",
        "-",
        *probe,
        stdin=PROBES.read_bytes(),
        within=240,
    )
    report: dict[str, Any] = json.loads(output.splitlines()[-1])
    assert report["broker"].split(".")[0] == "4", f"the stack runs RabbitMQ {report['broker']}"
    return report


async def test_listing_the_dead_letters_25_times_loses_none() -> None:
    # `make dlq` takes every dead letter and gives it back: 25 listings, more than the default limit.
    report = await probe_in_the_stack("list", "users_service", "--listings", "25")
    assert_every_listing_showed_every_letter(report)


async def test_a_message_that_kills_its_consumer_every_time_is_dead_lettered_after_the_limit() -> None:
    """In a vhost of the probe's own, where it declares the topology as the services do, with a
    DELIVERY_LIMIT other than RabbitMQ 4's default (20, the services' too): the limit that acts must
    be the configured one, not the broker's. And there the probe's consumers are the queue's only ones."""
    vhost, limit = f"crash-loop-{uuid.uuid4().hex[:8]}", 5
    user, _ = await administrator()
    await docker_compose("exec", "-T", "rabbitmq", "rabbitmqctl", "-q", "add_vhost", vhost)
    try:
        await docker_compose(
            "exec", "-T", "rabbitmq", "rabbitmqctl", "-q", "set_permissions", "-p", vhost, user, *[".*"] * 3
        )
        report = await probe_in_the_stack(
            "crash-loop", "users_service", "--vhost", vhost, environment={"DELIVERY_LIMIT": str(limit)}
        )
    finally:
        await docker_compose("exec", "-T", "rabbitmq", "rabbitmqctl", "-q", "delete_vhost", vhost)
    deliveries, dead_letter = len(report["deliveries"]), report["dead_letter"]
    print(f"\n  RabbitMQ {report['broker']}: delivered {deliveries} times, then dead-lettered: {dead_letter}")
    assert report["delivery_limit"] == limit
    assert_dead_lettered_after_the_limit(report)


# --- checks through the API ---------------------------------------------------------------------


async def all_orders(http: aiohttp.ClientSession, url: str, user: User) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        query = f"?limit=100&cursor={cursor}" if cursor else "?limit=100"
        async with http.get(f"{api(url)}/orders{query}", headers=user.headers) as response:
            assert response.status == 200, await response.text()
            page = await response.json()
        found += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return found


async def assert_credit_matches_approved_orders(
    http: aiohttp.ClientSession, url: str, users: list[User]
) -> list[dict[str, Any]]:
    """I2 as a client can see it: each user's credit in use is the total of their approved orders,
    once no order of theirs is pending any more. Returns every order of the users."""
    listed: list[dict[str, Any]] = []
    for user in users:

        async def settled(user: User = user) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
            orders = await all_orders(http, url, user)
            if any(order["status"] == "PENDING" for order in orders):
                return None
            account = await me(http, url, user)
            approved = sum(order["total_cents"] for order in orders if order["status"] == "APPROVED")
            return (orders, account) if account["credit_used_cents"] == approved else None

        orders, account = await eventually(settled, within=60, interval=0.2, what=f"{user.email} settled")
        assert account["credit_used_cents"] <= account["credit_limit_cents"]
        listed += orders
    return listed
