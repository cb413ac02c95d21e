"""The inbox on the real Postgres: the deliveries that wait together are applied in one transaction,
a duplicate among them is skipped, one that fails is split out and fails alone, and at light load a
batch is one delivery."""

import asyncio
import dataclasses
import uuid

import asyncpg
import pytest

from shared.envelope import Cause, Envelope
from shared.events import CreditReserved, OrderCreated
from shared.inbox import Delivery, Inbox
from shared.tracing import Tracing
from shared.unit_of_work import Outbox, UnitOfWork

POISON = 13  # an order total the handler below refuses


class Recorder:
    """A handler that notes each order it applies, in a table and in memory, and announces it."""

    def __init__(self) -> None:
        self.applied: list[uuid.UUID] = []
        self.transactions: set[int] = set()

    async def handle(self, work: UnitOfWork, event: OrderCreated) -> None:
        if event.total_cents == POISON:
            raise ValueError("a poison message")
        await work.connection.execute("INSERT INTO applied VALUES ($1)", event.order_id)
        self.transactions.add(await work.connection.fetchval("SELECT txid_current()"))
        self.applied.append(event.order_id)
        await work.emit(CreditReserved(event.order_id, event.user_id, event.total_cents))


@pytest.fixture
async def pool(shared_tables: asyncpg.Pool) -> asyncpg.Pool:
    await shared_tables.execute("CREATE TABLE applied (order_id uuid PRIMARY KEY)")
    return shared_tables


@dataclasses.dataclass
class Watched:
    """An inbox, and what it told: the size of each batch it committed, each event it applied."""

    inbox: Inbox
    batches: list[int]
    consumed: list[Envelope]


def watched(pool: asyncpg.Pool) -> Watched:
    batches: list[int] = []
    consumed: list[Envelope] = []
    inbox = Inbox(
        pool=pool,
        outbox=Outbox(source="users_service"),
        batch_size=16,
        unavailable_wait=1.0,
        consumed=consumed.append,
        batched=batches.append,
    )
    return Watched(inbox, batches, consumed)


def delivery(recorder: Recorder, total_cents: int = 100, envelope: Envelope | None = None) -> Delivery:
    envelope = envelope or Envelope.wrap(
        OrderCreated(uuid.uuid4(), uuid.uuid4(), total_cents),
        source="orders_service",
        cause=Cause("inbox-test", "inbox-test"),
    )
    event = envelope.event()
    with Tracing("users_service", enabled=False).consumer_span(envelope.type, {}) as span:
        return Delivery(envelope, event, recorder.handle, span)


async def rows(pool: asyncpg.Pool) -> tuple[int, int, int]:
    """How many orders were applied, and how many inbox and outbox rows there are."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM applied), (SELECT count(*) FROM inbox), (SELECT count(*) FROM outbox)"
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_deliveries_that_wait_together_are_applied_in_one_transaction_in_order(
    pool: asyncpg.Pool,
) -> None:
    recorder, watch = Recorder(), watched(pool)
    deliveries = [delivery(recorder) for _ in range(10)]
    twice = delivery(recorder, envelope=deliveries[3].envelope)  # the same event again, in the batch
    outcomes = await asyncio.gather(*(watch.inbox.apply(each) for each in [*deliveries, twice]))
    await watch.inbox.close()
    assert outcomes == [True] * 10 + [False]
    assert watch.batches == [11]
    assert len(recorder.transactions) == 1
    assert [str(order_id) for order_id in recorder.applied] == [
        each.envelope.data["order_id"] for each in deliveries
    ]
    assert [envelope.id for envelope in watch.consumed] == [each.envelope.id for each in deliveries]
    assert await rows(pool) == (10, 10, 10)
    # Each announcement is caused by its own event, in its own story.
    causes = await pool.fetch("SELECT body::jsonb ->> 'causationid' AS cause FROM outbox ORDER BY id")
    assert [row["cause"] for row in causes] == [str(each.envelope.id) for each in deliveries]


async def test_one_failure_splits_the_batch_and_fails_alone(pool: asyncpg.Pool) -> None:
    recorder, watch = Recorder(), watched(pool)
    deliveries = [delivery(recorder, POISON if index == 4 else 100) for index in range(8)]
    outcomes = await asyncio.gather(*(watch.inbox.apply(each) for each in deliveries), return_exceptions=True)
    await watch.inbox.close()
    assert [type(outcome).__name__ for outcome in outcomes] == ["bool"] * 4 + ["ValueError"] + ["bool"] * 3
    assert all(outcome is True for index, outcome in enumerate(outcomes) if index != 4)
    # The batch rolled back, then each was applied in a transaction of its own, once.
    assert watch.batches == [1] * 7
    assert await rows(pool) == (7, 7, 7)


async def test_at_light_load_a_batch_is_one_delivery(pool: asyncpg.Pool) -> None:
    recorder, watch = Recorder(), watched(pool)
    for _ in range(3):
        assert await watch.inbox.apply(delivery(recorder)) is True
    await watch.inbox.close()
    assert watch.batches == [1, 1, 1]
    assert len(recorder.transactions) == 3


async def test_an_event_applied_before_is_skipped_and_its_effect_not_repeated(pool: asyncpg.Pool) -> None:
    recorder, watch = Recorder(), watched(pool)
    first = delivery(recorder)
    assert await watch.inbox.apply(first) is True
    again = delivery(recorder, envelope=first.envelope)
    others = [delivery(recorder) for _ in range(3)]
    assert await asyncio.gather(*(watch.inbox.apply(each) for each in [again, *others])) == [
        False,
        True,
        True,
        True,
    ]
    await watch.inbox.close()
    assert await rows(pool) == (4, 4, 4)
