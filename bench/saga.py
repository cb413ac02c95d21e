"""The saga under load (R3, R4), the same SQL issued directly (the raw baseline), and the parts.

POST /api/v2/orders prices the order from the catalogue and commits it and its
`orders.order.created` row (T1); the relay publishes it (T2 claims and marks the row); users_service
reserves credit in one transaction with its inbox and outbox rows (T3); its relay publishes
`users.credit.reserved` (T4); orders_service approves the order (T5); its relay publishes
`orders.order.approved` (T6). Six commits per order when every relay batch holds one row, which is
what the raw baseline issues; under load the relays batch, so the saga may need fewer.

An order is final when its `orders.order.approved` (or `.rejected`) event arrives on a queue of our
own bound to the events exchange: the moment anyone outside orders_service can learn the outcome.
"""

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage

from bench.stack import BENCH_PRICE_CENTS, BENCH_SKU, Customer
from bench.stats import latency_percentiles
from shared.api_versions import CURRENT_PREFIX
from shared.db import SHARED_MIGRATIONS, apply_migrations
from shared.envelope import Cause, Envelope
from shared.events import CreditReserved, OrderApproved, OrderCreated

ROOT = Path(__file__).resolve().parents[1]
# Version 2's order: a sku and a quantity, priced by orders_service (stock_the_catalogue put it there).
ORDER_BODY = orjson.dumps({"items": [{"sku": BENCH_SKU, "quantity": 1}]})
FINAL_EVENTS = ("orders.order.approved", "orders.order.rejected")
SAGA_TRANSACTIONS = 6


class FinalStates:
    """Arrival times (perf_counter) of the orders' final events, read from a queue of our own."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.times: list[float] = []
        self._waiters: dict[str, Callable[[float], None]] = {}

    def on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        order_id = orjson.loads(message.body)["data"]["order_id"]
        self.arrived[order_id] = now
        self.times.append(now)
        waiter = self._waiters.pop(order_id, None)
        if waiter is not None:
            waiter(now)

    def when_final(self, order_id: str, callback: Callable[[float], None]) -> None:
        """Call back at the order's final event; at once if it came before the POST's answer did."""
        if order_id in self.arrived:
            callback(self.arrived[order_id])
        else:
            self._waiters[order_id] = callback

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for moment in self.times if start <= moment < end)


@contextlib.asynccontextmanager
async def final_states(rabbitmq_url: str) -> AsyncIterator[FinalStates]:
    states = FinalStates()
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange("events")
        # Exclusive and not durable: it only watches, and vanishes with the connection.
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for event_type in FINAL_EVENTS:
            await queue.bind(exchange, routing_key=event_type)

        async def consume(message: AbstractIncomingMessage) -> None:
            states.on_message(message)

        await queue.consume(consume, no_ack=True)
        yield states
    finally:
        await connection.close()


async def post_order(session: aiohttp.ClientSession, url: str, customer: Customer) -> str | None:
    headers = {"Authorization": f"Bearer {customer.token}", "Content-Type": "application/json"}
    try:
        async with session.post(
            f"{url}{CURRENT_PREFIX}/orders", data=ORDER_BODY, headers=headers
        ) as response:
            if response.status != 202:
                return None
            order_id: str = (await response.json())["id"]
            return order_id
    except (aiohttp.ClientError, TimeoutError):
        return None


async def saga_throughput(
    session: aiohttp.ClientSession,
    orders_url: str,
    customers: Sequence[Customer],
    final: FinalStates,
    *,
    warmup: float,
    duration: float,
    in_flight: int,
    posters: int,
    drain_timeout: float,
) -> dict[str, Any]:
    """Orders reaching a final state per second, with at most `in_flight` orders undecided: enough
    to keep every stage busy, bounded so that the backlog (and the drain after) stays finite."""
    slots = asyncio.Semaphore(in_flight)
    stopping = False
    posted = errors = 0
    outstanding: set[str] = set()
    drained = asyncio.Event()

    def release(order_id: str) -> Callable[[float], None]:
        def done(_: float) -> None:
            outstanding.discard(order_id)
            slots.release()
            if stopping and not outstanding:
                drained.set()

        return done

    async def poster(index: int) -> None:
        nonlocal posted, errors
        turn = index
        while not stopping:
            await slots.acquire()
            if stopping:
                slots.release()
                return
            customer = customers[turn % len(customers)]
            turn += posters
            order_id = await post_order(session, orders_url, customer)
            if order_id is None:
                errors += 1
                slots.release()
                continue
            posted += 1
            outstanding.add(order_id)
            final.when_final(order_id, release(order_id))

    started = time.perf_counter()
    tasks = [asyncio.create_task(poster(index)) for index in range(posters)]
    await asyncio.sleep(warmup + duration)  # the load runs for this long: it is the measurement
    window = (started + warmup, time.perf_counter())
    stopping = True
    await asyncio.gather(*tasks)
    drain_started = time.perf_counter()
    if outstanding:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), drain_timeout)
    completed = final.count_between(*window)
    return {
        "orders_per_second": completed / (window[1] - window[0]),
        "completed_in_window": completed,
        "window_seconds": window[1] - window[0],
        "posted": posted,
        "post_errors": errors,
        "undecided_after_drain": len(outstanding),
        "drain_seconds": time.perf_counter() - drain_started,
    }


class _OpenLoop:
    """One latency run's orders: when each was answered and finished, relative to its schedule."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        customers: Sequence[Customer],
        final: FinalStates,
        measure_from: float,
    ) -> None:
        self.session, self.url, self.customers, self.final = session, url, customers, final
        self.measure_from = measure_from
        self.answered: list[float] = []
        self.finished: list[float] = []
        self.lags: list[float] = []
        self.errors = 0
        self.pending: set[str] = set()
        self.all_done = asyncio.Event()
        self.sent_all = False

    async def one(self, index: int, scheduled: float) -> None:
        lag = time.perf_counter() - scheduled
        order_id = await post_order(self.session, self.url, self.customers[index % len(self.customers)])
        measured = scheduled >= self.measure_from
        if order_id is None:
            self.errors += measured
            return
        if measured:
            self.answered.append((time.perf_counter() - scheduled) * 1000)
            self.lags.append(lag * 1000)
        self.pending.add(order_id)

        def done(moment: float) -> None:
            self.pending.discard(order_id)
            if measured:
                self.finished.append((moment - scheduled) * 1000)
            if self.sent_all and not self.pending:
                self.all_done.set()

        self.final.when_final(order_id, done)


async def saga_latency(
    session: aiohttp.ClientSession,
    url: str,
    customers: Sequence[Customer],
    final: FinalStates,
    *,
    rate: float,
    warmup: float,
    duration: float,
    drain_timeout: float,
) -> dict[str, Any]:
    """Open loop at a fixed rate: each order's clock starts at its scheduled time, whether or not
    the earlier ones have been answered; the saga's time ends when its final event arrives."""
    total = max(1, int(rate * (warmup + duration)))
    start = time.perf_counter() + 0.05
    run = _OpenLoop(session, url, customers, final, measure_from=start + warmup)
    tasks: set[asyncio.Task[None]] = set()
    for index in range(total):
        scheduled = start + index / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(run.one(index, scheduled))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.gather(*tasks)
    run.sent_all = True
    if run.pending:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.all_done.wait(), drain_timeout)
    return {
        "rate": rate,
        "orders": len(run.finished),
        "post_errors": run.errors,
        "undecided": len(run.pending),
        "final_ms": latency_percentiles(run.finished),
        "post_answered_ms": latency_percentiles(run.answered),
        "send_lag_ms": latency_percentiles(run.lags),
    }


# --- the raw baseline: the saga's statements, issued directly with asyncpg -------------------------

# T1 reads the items' prices from the catalogue first, as orders_service does.
FETCH_PRICES = "SELECT sku, price_cents, active FROM products WHERE sku = ANY($1::text[])"
INSERT_ORDER = """
    INSERT INTO orders (id, user_id, status, total_cents) VALUES ($1, $2, 'PENDING', $3)
    RETURNING id, user_id, status, rejection_reason, total_cents, created_at, updated_at
"""
INSERT_ITEMS = """
    INSERT INTO order_items (order_id, line_no, sku, quantity, unit_price_cents) VALUES ($1, $2, $3, $4, $5)
"""
INSERT_OUTBOX = "INSERT INTO outbox (event_id, event_type, body) VALUES ($1, $2, $3)"
# The relay's own claim (shared/relay.py), with the conditions that its partial index holds: without
# them Postgres reads every row the run has published, and the baseline slows as the table grows.
CLAIM = """
    SELECT id, event_type, body FROM outbox
    WHERE published_at IS NULL AND set_aside_at IS NULL AND (retry_at IS NULL OR retry_at <= now())
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
"""
MARK = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"
INSERT_INBOX = """
    INSERT INTO inbox (event_id, event_type) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true
"""
LOCK_ACCOUNT = "SELECT id, credit_limit_cents, credit_used_cents FROM users WHERE id = $1 FOR UPDATE"
LOCK_RESERVATION = """
    SELECT order_id, user_id, amount_cents, status FROM credit_reservations WHERE order_id = $1 FOR UPDATE
"""
SAVE_RESERVATION = """
    INSERT INTO credit_reservations (order_id, user_id, amount_cents, status) VALUES ($1, $2, $3, $4)
    ON CONFLICT (order_id) DO UPDATE
    SET amount_cents = EXCLUDED.amount_cents, status = EXCLUDED.status, updated_at = now()
"""
CHANGE_CREDIT = "UPDATE users SET credit_used_cents = credit_used_cents + $2 WHERE id = $1"
LOCK_STATUS = "SELECT status FROM orders WHERE id = $1 FOR UPDATE"
SET_STATUS = """
    UPDATE orders SET status = $2, rejection_reason = $3, updated_at = now() WHERE id = $1
    RETURNING id, user_id, status, rejection_reason, total_cents, created_at, updated_at
"""


def _body(event: Any, source: str) -> str:
    cause = Cause(correlation_id=str(uuid.uuid4()), causation_id=str(uuid.uuid4()))
    return Envelope.wrap(event, source=source, cause=cause).to_json().decode()


class RawSaga:
    """The saga's six transactions, statement for statement, without HTTP, broker or services.

    Event bodies are real envelopes of the same size; the relays' claim takes one row (`LIMIT 1`),
    the unbatched case.
    """

    def __init__(self, orders: asyncpg.Pool, users: asyncpg.Pool, user_ids: Sequence[uuid.UUID]) -> None:
        self.orders = orders
        self.users = users
        self.user_ids = user_ids
        sample_order, sample_user = uuid.uuid4(), uuid.uuid4()
        self.bodies = {
            OrderCreated.TYPE: _body(OrderCreated(sample_order, sample_user, 1), "orders_service"),
            CreditReserved.TYPE: _body(CreditReserved(sample_order, sample_user, 1), "users_service"),
            OrderApproved.TYPE: _body(OrderApproved(sample_order, sample_user), "orders_service"),
        }

    async def relay(self, pool: asyncpg.Pool, timings: dict[str, list[float]] | None) -> None:
        async with pool.acquire() as connection:
            started = time.perf_counter()
            async with connection.transaction():
                rows = await connection.fetch(CLAIM, 1)
                if timings is not None:
                    timings["relay_claim"].append((time.perf_counter() - started) * 1000)
                await connection.execute(MARK, [row["id"] for row in rows])

    async def once(self, index: int, timings: dict[str, list[float]] | None = None) -> None:
        order_id = uuid.uuid4()
        user_id = self.user_ids[index % len(self.user_ids)]

        def took(name: str, started: float) -> None:
            if timings is not None:
                timings[name].append((time.perf_counter() - started) * 1000)

        async with self.orders.acquire() as connection:  # T1: place the order
            started = time.perf_counter()
            async with connection.transaction():
                await connection.fetch(FETCH_PRICES, [BENCH_SKU])
                await connection.fetchrow(INSERT_ORDER, order_id, user_id, BENCH_PRICE_CENTS)
                await connection.executemany(INSERT_ITEMS, [(order_id, 1, BENCH_SKU, 1, BENCH_PRICE_CENTS)])
                await connection.execute(
                    INSERT_OUTBOX, uuid.uuid4(), OrderCreated.TYPE, self.bodies[OrderCreated.TYPE]
                )
            took("place", started)
        await self.relay(self.orders, timings)  # T2
        async with self.users.acquire() as connection:  # T3: reserve credit
            started = time.perf_counter()
            async with connection.transaction():
                await connection.fetchval(INSERT_INBOX, uuid.uuid4(), OrderCreated.TYPE)
                await connection.fetchrow(LOCK_ACCOUNT, user_id)
                await connection.fetchrow(LOCK_RESERVATION, order_id)
                await connection.execute(SAVE_RESERVATION, order_id, user_id, 1, "RESERVED")
                await connection.execute(CHANGE_CREDIT, user_id, 1)
                await connection.execute(
                    INSERT_OUTBOX, uuid.uuid4(), CreditReserved.TYPE, self.bodies[CreditReserved.TYPE]
                )
            took("reserve", started)
        await self.relay(self.users, timings)  # T4
        async with self.orders.acquire() as connection:  # T5: approve
            started = time.perf_counter()
            async with connection.transaction():
                await connection.fetchval(INSERT_INBOX, uuid.uuid4(), CreditReserved.TYPE)
                await connection.fetchval(LOCK_STATUS, order_id)
                await connection.fetchrow(SET_STATUS, order_id, "APPROVED", None)
                await connection.execute(
                    INSERT_OUTBOX, uuid.uuid4(), OrderApproved.TYPE, self.bodies[OrderApproved.TYPE]
                )
            took("approve", started)
        await self.relay(self.orders, timings)  # T6

    async def throughput(self, *, workers: int, duration: float) -> dict[str, Any]:
        done = 0
        deadline = time.perf_counter() + duration

        async def worker(index: int) -> None:
            nonlocal done
            turn = index
            while time.perf_counter() < deadline:
                await self.once(turn)
                done += 1
                turn += workers

        started = time.perf_counter()
        await asyncio.gather(*(worker(index) for index in range(workers)))
        elapsed = time.perf_counter() - started
        return {
            "orders_per_second": done / elapsed,
            "transactions_per_second": done * SAGA_TRANSACTIONS / elapsed,
            "orders": done,
            "workers": workers,
        }

    async def parts(self, count: int) -> dict[str, dict[str, float]]:
        """Each transaction's own time, one order at a time (no queueing behind other orders)."""
        timings: dict[str, list[float]] = {"place": [], "reserve": [], "approve": [], "relay_claim": []}
        for index in range(count):
            await self.once(index, timings)
        return {name: latency_percentiles(values) for name, values in timings.items()}


@contextlib.asynccontextmanager
async def raw_saga(dsns: dict[str, str], customers: int) -> AsyncIterator[RawSaga]:
    """The raw baseline on databases of its own, with the services' real migrations."""
    orders = await asyncpg.create_pool(dsns["raw_orders"], min_size=1, max_size=10)
    users = await asyncpg.create_pool(dsns["raw_users"], min_size=1, max_size=10)
    try:
        await apply_migrations(orders, [SHARED_MIGRATIONS, ROOT / "orders_service" / "migrations"])
        await apply_migrations(users, [SHARED_MIGRATIONS, ROOT / "users_service" / "migrations"])
        await orders.execute(
            "INSERT INTO products (sku, name, price_cents) VALUES ($1, 'The benchmark''s product', $2)",
            BENCH_SKU,
            BENCH_PRICE_CENTS,
        )
        user_ids = [uuid.uuid4() for _ in range(customers)]
        await users.executemany(
            """
            INSERT INTO users (id, email, name, password_hash, credit_limit_cents)
            VALUES ($1, $2, 'Bench', 'not-a-hash', 10000000)
            """,
            [(user_id, f"{user_id}@example.com") for user_id in user_ids],
        )
        yield RawSaga(orders, users, user_ids)
    finally:
        await orders.close()
        await users.close()


async def publish_confirm_latency(rabbitmq_url: str, count: int) -> dict[str, float]:
    """One persistent, mandatory publish at a time, with confirms, into a quorum queue (as each of the
    saga's events goes into one): the broker's share of a hop."""
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(
            f"bench.confirm.{uuid.uuid4().hex[:8]}", durable=True, arguments={"x-queue-type": "quorum"}
        )
        body = _body(OrderCreated(uuid.uuid4(), uuid.uuid4(), 1), "orders_service").encode()
        samples = []
        try:
            for _ in range(count):
                message = aio_pika.Message(
                    body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(uuid.uuid4())
                )
                started = time.perf_counter()
                await asyncio.wait_for(
                    channel.default_exchange.publish(message, routing_key=queue.name, mandatory=True), 10
                )
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            await queue.delete(if_unused=False, if_empty=False)
        return latency_percentiles(samples)
    finally:
        await connection.close()


def relay_wake_delays(log_text: str) -> list[tuple[str, float]]:
    """From a service's JSON log at INFO: per event, ms from "outbox written" (logged right after the
    commit) to the start of its publish ("published, confirmed" minus its confirm_ms)."""
    written: dict[tuple[str, str], float] = {}
    delays: list[tuple[str, float]] = []
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        message = entry.get("event")
        if message not in ("outbox written", "published, confirmed"):
            continue
        key = (str(entry.get("type")), str(entry.get("order")))
        moment = datetime.datetime.fromisoformat(entry["timestamp"]).timestamp()
        if message == "outbox written":
            written[key] = moment
        elif key in written:
            publish_started = moment - float(entry["confirm_ms"]) / 1000
            delays.append((key[0], (publish_started - written.pop(key)) * 1000))
    return delays
