"""Two replicas of each service and two gateways on one machine; one of each is killed mid-burst.

    gateway   ──▶ users_service,   orders_service      (replica 1 of each: "A")
    gateway-2 ──▶ users_service-2, orders_service-2    (replica 2 of each: "B")

A gateway has one URL per upstream, so each is paired with one replica of each service, and killing
replica 1 makes gateway A answer 502/503. The client knows both gateways and sends a request that
found no live path to the other one, with the same Idempotency-Key, so that a retry never places a
second order: what a real client behind a load balancer does.

The events have no such pairing: both replicas of a service consume its one queue (competing
consumers) and both relays claim rows of its one outbox. That is what the kill must not disturb:
once quiet, the invariants I1 to I4 hold, every accepted order exists exactly once, and every event
was applied exactly once, first with the survivors alone, then again with the killed ones back.
"""

import asyncio
import dataclasses
import uuid
from typing import Any

import aiohttp

from devstack.waiting import eventually
from shared.bus_contract import bus
from tests.e2e.api import User, new_product, new_user
from tests.e2e.conftest import Stack, StackFactory
from tests.e2e.faults import UNTHROTTLED
from tests.e2e.saga_checker import SystemState, assert_invariants_once_quiet

USER_COUNT = 10
CREDIT_LIMIT_CENTS = 6_000
BURST = 200
AFTER_RESTART = 40
CONCURRENCY = 16
KILL_SERVICES_AT = 70  # accepted orders, of BURST
KILL_GATEWAY_AT = 120
# Answers that mean "this path is down right now", not "this request is wrong": try the other gateway.
NO_LIVE_PATH = {502, 503, 504}
SERVICES = ("users_service", "orders_service")


def replica_2(name: str) -> str:
    return f"{name}-2"


def price(n: int) -> int:
    """The price of the burst's n-th order: each user's orders add up to about three times the
    limit, so that many are rejected for credit."""
    return 400 + 50 * (n // USER_COUNT % 20)


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    replayed: bool  # an Idempotency-Key retry, answered with the order the first attempt placed


class TwoGateways:
    """A client of both gateways: it prefers one, and fails over to the other."""

    def __init__(self, http: aiohttp.ClientSession, urls: list[str]) -> None:
        self.http = http
        self.urls = urls
        self.failovers = 0

    async def call(
        self, method: str, path: str, *, prefer: int, headers: dict[str, str], json: Any = None
    ) -> Answer:
        in_turn = self.urls[prefer:] + self.urls[:prefer]

        async def attempt() -> Answer | None:
            for url in in_turn:
                try:
                    async with self.http.request(
                        method, f"{url}{path}", json=json, headers=headers
                    ) as response:
                        if response.status not in NO_LIVE_PATH:
                            replayed = response.headers.get("Idempotent-Replayed") == "true"
                            return Answer(response.status, await response.json(content_type=None), replayed)
                except aiohttp.ClientConnectionError:
                    pass  # the gateway is dead, or died holding this request
                self.failovers += 1
            return None  # both down for the moment (a circuit still open): again, shortly

        return await eventually(attempt, within=20, what=f"{method} {path} answered by a gateway")


@dataclasses.dataclass
class Burst:
    """Orders placed concurrently through both gateways, some cancelled, some users read back."""

    client: TwoGateways
    users: list[User]
    skus: dict[int, str]  # price -> a product of the test's own at that price
    accepted: dict[str, str] = dataclasses.field(default_factory=dict)  # Idempotency-Key -> order id
    replays: int = 0

    async def run(self, count: int) -> None:
        start = len(self.accepted)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(n: int) -> None:
            async with slots:
                await self.order(n)

        await asyncio.gather(*(one(n) for n in range(start, start + count)))

    async def order(self, n: int) -> None:
        user = self.users[n % len(self.users)]
        body = {"items": [{"sku": self.skus[price(n)], "quantity": 1}]}
        key = str(uuid.uuid4())
        headers = {**user.headers, "Idempotency-Key": key}
        placed = await self.client.call("POST", "/api/v2/orders", prefer=n % 2, headers=headers, json=body)
        assert placed.status == 202, placed.body
        self.accepted[key] = placed.body["id"]
        self.replays += placed.replayed
        if n % 5 == 0:  # at once, so often before the credit answer: a cancel racing the saga
            path = f"/api/v2/orders/{placed.body['id']}/cancel"
            cancelled = await self.client.call("POST", path, prefer=(n + 1) % 2, headers=user.headers)
            assert cancelled.status in {200, 202, 409}, cancelled.body
        if n % 4 == 1:  # users_service's HTTP side goes through the same failover
            me = await self.client.call("GET", "/api/v2/users/me", prefer=n % 2, headers=user.headers)
            assert me.status == 200, me.body


async def test_killing_one_replica_of_each_service_mid_burst_loses_and_duplicates_nothing(
    fresh_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    stack = await fresh_stack(gateway=UNTHROTTLED)
    await asyncio.gather(*(stack.start_replica(service, replica_2(service)) for service in SERVICES))
    await stack.start_replica(
        "gateway",
        replica_2("gateway"),
        USERS_SERVICE_URL=stack.processes[replica_2("users_service")].url,
        ORDERS_SERVICE_URL=stack.processes[replica_2("orders_service")].url,
    )
    gateways = [stack.url, stack.processes[replica_2("gateway")].url]
    admin = stack.keys.admin_headers()
    users = [
        await new_user(http, gateways[n % 2], credit_limit_cents=CREDIT_LIMIT_CENTS, admin=admin)
        for n in range(USER_COUNT)
    ]
    # Made before the burst, while every process is up: the burst only places orders.
    skus = {
        cents: await new_product(http, stack.url, admin, cents)
        for cents in sorted(set(map(price, range(BURST + AFTER_RESTART))))
    }
    burst = Burst(TwoGateways(http, gateways), users, skus)

    placing = asyncio.create_task(burst.run(BURST))
    await eventually(lambda: _accepted(burst, KILL_SERVICES_AT), within=30, what="the burst under way")
    # Killed only once every replica has shown it does its share, so the survivors demonstrably
    # take over work, rather than having done it all along.
    await eventually(lambda: _all_replicas_working(stack), within=30, what="every replica consuming")
    survivors_at_kill = _log_offsets(stack, [replica_2(service) for service in SERVICES])
    await asyncio.gather(stack.users.kill(), stack.orders.kill())
    accepted_at_kill = len(burst.accepted)
    await eventually(lambda: _accepted(burst, KILL_GATEWAY_AT), within=30, what="the burst going on")
    await stack.gateway.kill()
    await placing

    assert accepted_at_kill < BURST, "the burst ended before the kill: nothing left for the survivors"
    assert burst.client.failovers > 0, "no request ever needed the other gateway: the kills went unseen"
    state = await assert_invariants_once_quiet(stack, within=30)
    _assert_each_order_once_and_each_event_applied_once(state, burst)
    for name, offset in survivors_at_kill.items():
        assert "consumed" in stack.processes[name].log_text()[offset:], f"{name} did no work after the kill"

    # The killed ones come back and rejoin the same queues and outbox, next to the survivors.
    await asyncio.gather(*(stack.start(service) for service in SERVICES))
    await stack.start("gateway")
    restarted_at = _log_offsets(stack, list(SERVICES))
    await burst.run(AFTER_RESTART)
    state = await assert_invariants_once_quiet(stack, within=30)
    _assert_each_order_once_and_each_event_applied_once(state, burst)
    for name, offset in restarted_at.items():
        assert "consumed" in stack.processes[name].log_text()[offset:], f"{name} took no share after restart"


async def _accepted(burst: Burst, count: int) -> bool:
    return len(burst.accepted) >= count


async def _all_replicas_working(stack: Stack) -> bool:
    """Both replicas of each service have consumed an event and relayed one of their own."""
    replicas = [*SERVICES, *map(replica_2, SERVICES)]
    logs = [stack.processes[name].log_text() for name in replicas]
    return all("consumed" in log and "published, confirmed" in log for log in logs)


def _log_offsets(stack: Stack, names: list[str]) -> dict[str, int]:
    return {name: len(stack.processes[name].log_text()) for name in names}


def _assert_each_order_once_and_each_event_applied_once(state: SystemState, burst: Burst) -> None:
    # Each Idempotency-Key the clients used placed one order, whatever the failovers: no order lost
    # (every 202 exists), none placed twice (nothing else exists).
    stored = [str(order["id"]) for order in state.orders]
    assert len(stored) == len(set(stored)) == len(burst.accepted)
    assert set(stored) == set(burst.accepted.values())
    assert {order["status"] for order in state.orders} == {"APPROVED", "REJECTED", "CANCELLED"}
    # Each inbox holds exactly the events its service consumes, each once (its primary key): every
    # event applied, none applied that was never sent.
    assert state.users_inbox == {
        row["event_id"] for row in state.orders_outbox if row["event_type"] in bus().receives("users_service")
    }
    assert state.orders_inbox == {
        row["event_id"] for row in state.users_outbox if row["event_type"] in bus().receives("orders_service")
    }
    unpublished = [row for row in [*state.orders_outbox, *state.users_outbox] if row["published_at"] is None]
    assert not unpublished, f"{len(unpublished)} outbox rows never published"
