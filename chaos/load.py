"""The clients: a steady load of orders and cancels through both gateways, every operation recorded.

Before the faults begin, an admin stocks a catalogue of the run's own (products at prices drawn from
PRICE_CENTS) and gives the customers their credit limits: most with room for every order they will
place, a few with a small limit, so that their orders are rejected for credit until a cancel frees
some. Then workers take turns at a steady rate (a closed loop: when answers are slow, the rate drops
rather than piling requests up), and each turn is one of

    place   an order of one product of the catalogue (API version 2: a sku and a quantity, priced
            by orders_service), whose X-Request-ID, and so the order's correlation id, carries the
            operation's Idempotency-Key; now and then followed at once by its cancel, which races
            the saga (a cancel that overtakes the create)
    cancel  an order placed earlier (approved, often: its credit is released)

An attempt that got no definite answer is tried again, on the other gateway first, with the same
Idempotency-Key, as a client behind a load balancer would, until it is answered or its time is up.
"""

import asyncio
import dataclasses
import random
import time
import uuid
from typing import Any

import aiohttp

from chaos.history import Attempt, Kind, Operation, Outcome, classify_answer, classify_error
from shared.api_versions import CURRENT_PREFIX
from shared.http import REQUEST_ID_HEADER
from users_service.config import MAX_CREDIT_LIMIT_CENTS

PASSWORD = "chaos-monkey-password"
ROOMY_CUSTOMERS = 8
TIGHT_CUSTOMERS = 4
ROOMY_LIMIT_CENTS = MAX_CREDIT_LIMIT_CENTS  # the contract's largest
TIGHT_LIMIT_CENTS = 4_000
PRODUCTS = 12
PRICE_CENTS = (100, 2_500)
# Each order's correlation id is this and its operation's key: its order is found by it, whatever
# the answer was, or whether one came at all (chaos/check.py).
STORY_PREFIX = "chaos-"
CANCEL_AT_ONCE = 0.15  # of orders placed: cancelled right after, racing the saga
CANCEL_LATER = 0.15  # of turns: a cancel of an earlier order instead of a new one
# Shorter than the longest freeze, and than the gateway's own upstream timeout: a client often gives up
# on a request that will yet take effect, and tries again.
ATTEMPT_TIMEOUT = aiohttp.ClientTimeout(total=5, connect=2)
OPERATION_TIME = 20.0  # seconds an operation is tried for, at most; then its outcome stands
BACKOFF = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds before each retry (so six attempts at most)


@dataclasses.dataclass(frozen=True)
class Customer:
    index: int
    id: str
    credit_limit_cents: int
    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Product:
    sku: str
    price_cents: int


async def _expect(response: aiohttp.ClientResponse, status: set[int], doing: str) -> Any:
    """The answer's JSON, or the run ends before any fault: nothing of the set-up may fail."""
    if response.status not in status:
        raise RuntimeError(f"{doing}: {response.status} {await response.text()}")
    return await response.json()


async def stock_catalogue(
    http: aiohttp.ClientSession, gateways: list[str], rng: random.Random, admin: dict[str, str]
) -> list[Product]:
    """The run's products, put into the catalogue by an admin through the gateways in turn."""
    products = []
    for index in range(PRODUCTS):
        product = Product(f"CHAOS-{index:02d}", rng.randint(*PRICE_CENTS))
        body = {"name": f"Chaos product {index}", "price_cents": product.price_cents, "active": True}
        url = f"{gateways[index % len(gateways)]}{CURRENT_PREFIX}/products/{product.sku}"
        async with http.put(url, json=body, headers=admin) as response:
            await _expect(response, {200, 201}, f"stocking {product.sku}")
        products.append(product)
    return products


async def make_customers(
    http: aiohttp.ClientSession, gateways: list[str], rng: random.Random, admin: dict[str, str]
) -> list[Customer]:
    """Registered (with the policy's limit), given their limit by an admin, and signed in, through
    the gateways in turn, before any fault."""
    limits = [ROOMY_LIMIT_CENTS] * ROOMY_CUSTOMERS + [TIGHT_LIMIT_CENTS] * TIGHT_CUSTOMERS
    customers = []
    for index, limit in enumerate(limits):
        gateway = f"{gateways[index % len(gateways)]}{CURRENT_PREFIX}"
        email = f"chaos-{index}-{rng.getrandbits(48):012x}@example.com"
        body = {"email": email, "name": f"Chaos {index}", "password": PASSWORD}
        async with http.post(f"{gateway}/users", json=body) as response:
            user_id = (await _expect(response, {201}, "registering a customer"))["id"]
        change = {"credit_limit_cents": limit}
        async with http.put(
            f"{gateway}/users/{user_id}/credit-limit", json=change, headers=admin
        ) as response:
            await _expect(response, {200}, "setting a customer's credit limit")
        sign_in = {"email": email, "password": PASSWORD}
        async with http.post(f"{gateway}/auth/token", json=sign_in) as response:
            token = (await _expect(response, {200}, "signing a customer in"))["access_token"]
        customers.append(Customer(index, user_id, limit, {"Authorization": f"Bearer {token}"}))
    return customers


class Clients:
    """The clients of both gateways: every operation they attempt ends up in `history`."""

    def __init__(self, http: aiohttp.ClientSession, gateways: list[str], started_at: float) -> None:
        self.http = http
        self.gateways = gateways
        self.started_at = started_at
        self.history: list[Operation] = []

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    async def place(self, customer: Customer, product: Product, key: str, prefer: int) -> Operation:
        """One of `product`, whose price is what the order must come to."""
        operation = Operation(
            Kind.PLACE, customer.index, key, self.elapsed(), total_cents=product.price_cents
        )
        self.history.append(operation)
        body = {"items": [{"sku": product.sku, "quantity": 1}]}
        headers = {**customer.headers, "Idempotency-Key": key, REQUEST_ID_HEADER: f"{STORY_PREFIX}{key}"}
        answer = await self._attempt(operation, f"{CURRENT_PREFIX}/orders", headers, body, prefer)
        operation.finished_at = self.elapsed()
        if answer is not None:
            operation.order_id = answer["id"]
        return operation

    async def cancel(self, customer: Customer, order_id: str, prefer: int) -> Operation:
        operation = Operation(Kind.CANCEL, customer.index, order_id, self.elapsed(), order_id=order_id)
        self.history.append(operation)
        path = f"{CURRENT_PREFIX}/orders/{order_id}/cancel"
        await self._attempt(operation, path, customer.headers, None, prefer)
        operation.finished_at = self.elapsed()
        return operation

    async def _attempt(
        self, operation: Operation, path: str, headers: dict[str, str], body: Any, prefer: int
    ) -> dict[str, Any] | None:
        """Try until a definite answer or the operation's time is up; the ok answer's body, if any."""
        give_up_at = time.monotonic() + OPERATION_TIME
        for number in range(len(BACKOFF) + 1):
            attempt, answer = await self._once((prefer + number) % len(self.gateways), path, headers, body)
            operation.attempts.append(attempt)
            if attempt.outcome is Outcome.OK:
                operation.answer = answer
                return answer
            if not attempt.retry or number == len(BACKOFF):
                return None
            pause = BACKOFF[number]
            if time.monotonic() + pause > give_up_at:
                return None
            await asyncio.sleep(pause)  # a client's backoff before it tries again
        return None

    async def _once(
        self, gateway: int, path: str, headers: dict[str, str], body: Any
    ) -> tuple[Attempt, dict[str, Any] | None]:
        url = f"{self.gateways[gateway]}{path}"
        answer: dict[str, Any] | None = None
        try:
            async with self.http.post(url, json=body, headers=headers, timeout=ATTEMPT_TIMEOUT) as response:
                attempt = classify_answer(response.status)
                if attempt.outcome is Outcome.OK:
                    # Its body says which order: until it has arrived whole, the outcome is unknown.
                    answer = await response.json()
        except (aiohttp.ClientError, TimeoutError) as error:
            attempt, answer = classify_error(error), None
        return dataclasses.replace(attempt, gateway=gateway), answer


@dataclasses.dataclass
class Load:
    """Workers that take turns at a steady rate until `until` (a time.monotonic() value)."""

    clients: Clients
    customers: list[Customer]
    catalogue: list[Product]
    rng: random.Random
    rate: float
    until: float
    placed: list[tuple[Customer, str]] = dataclasses.field(default_factory=list)  # ok orders
    _next_turn: float = 0.0

    async def run(self, workers: int) -> None:
        self._next_turn = time.monotonic()
        await asyncio.gather(*(self._worker() for _ in range(workers)))

    async def _turn(self) -> bool:
        """Wait for the next turn; False once the load is over. Turns are 1/rate apart and never
        bunch up to catch up after slow answers."""
        now = time.monotonic()
        self._next_turn = max(self._next_turn + 1 / self.rate, now)
        if self._next_turn >= self.until:
            return False
        await asyncio.sleep(self._next_turn - now)  # the pace of the load
        return True

    async def _worker(self) -> None:
        while await self._turn():
            # Everything random about a turn is drawn at once, in turn order: the same seed, the
            # same sequence of choices.
            customer = self.rng.choice(self.customers)
            product = self.rng.choice(self.catalogue)
            key = uuid.UUID(int=self.rng.getrandbits(128), version=4).hex
            prefer = self.rng.randrange(2)
            cancel_later, cancel_at_once = (
                self.rng.random() < CANCEL_LATER,
                self.rng.random() < CANCEL_AT_ONCE,
            )
            earlier = self.rng.randrange(len(self.placed)) if self.placed else None
            if cancel_later and earlier is not None:
                owner, order_id = self.placed[earlier]
                await self.clients.cancel(owner, order_id, prefer)
                continue
            placed = await self.clients.place(customer, product, key, prefer)
            if placed.order_id is None:
                continue
            self.placed.append((customer, placed.order_id))
            if cancel_at_once:
                await self.clients.cancel(customer, placed.order_id, 1 - prefer)
