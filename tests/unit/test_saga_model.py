"""Property: whatever the interleaving, duplication and reordering of the saga's messages, once they
are all delivered the state satisfies I1 to I3.

The model runs both services' real decision functions (`users_service.saga`, `orders_service.saga`)
with an inbox each, over a "network" that delivers any pending message next and may deliver one
again. Only the storage is in memory; the decisions are the production code.
"""

import collections
import dataclasses
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_service import saga as orders_saga
from shared.events import CreditRejected, CreditReserved, Event, OrderCancelled, OrderCreated
from users_service import saga as users_saga

MAX_REDELIVERIES = 20


@dataclasses.dataclass(frozen=True)
class Message:
    event_id: int
    event: Event
    to: str


@dataclasses.dataclass
class Order:
    user_id: uuid.UUID
    total_cents: int
    status: orders_saga.OrderStatus = orders_saga.OrderStatus.PENDING


@dataclasses.dataclass
class Model:
    accounts: dict[uuid.UUID, users_saga.Account]
    reservations: dict[uuid.UUID, users_saga.Reservation] = dataclasses.field(default_factory=dict)
    orders: dict[uuid.UUID, Order] = dataclasses.field(default_factory=dict)
    inboxes: dict[str, set[int]] = dataclasses.field(
        default_factory=lambda: {"users": set(), "orders": set()}
    )
    network: list[Message] = dataclasses.field(default_factory=list)
    emitted: list[Event] = dataclasses.field(default_factory=list)
    next_id: int = 0

    def emit(self, event: Event) -> None:
        self.emitted.append(event)
        self.next_id += 1
        if isinstance(event, OrderCreated | OrderCancelled):
            self.network.append(Message(self.next_id, event, "users"))
        elif isinstance(event, CreditReserved | CreditRejected):
            self.network.append(Message(self.next_id, event, "orders"))

    def place(self, user_id: uuid.UUID, total_cents: int) -> None:
        # Ids from a counter, not at random: hypothesis must see the same run for the same draws.
        order_id = uuid.UUID(int=1_000_000 + len(self.orders))
        self.orders[order_id] = Order(user_id, total_cents)
        self.emit(OrderCreated(order_id, user_id, total_cents))

    def cancel(self, order_id: uuid.UUID) -> None:
        order = self.orders[order_id]
        try:
            transition = orders_saga.cancel(order_id, order.user_id, order.status)
        except orders_saga.NotCancellable:
            return
        if transition is not None:
            order.status = transition.status
            self.emit(transition.event)

    def deliver(self, index: int, again_later: bool) -> None:
        message = self.network[index] if again_later else self.network.pop(index)
        inbox = self.inboxes[message.to]
        if message.event_id in inbox:
            return  # a duplicate: the inbox skips it
        inbox.add(message.event_id)
        if message.to == "users":
            self._at_users(message.event)
        else:
            self._at_orders(message.event)

    def _at_users(self, event: Event) -> None:
        assert isinstance(event, OrderCreated | OrderCancelled)
        existing = self.reservations.get(event.order_id)
        if isinstance(event, OrderCreated):
            decision = users_saga.on_order_created(self.accounts.get(event.user_id), existing, event)
        else:
            decision = users_saga.on_order_cancelled(existing, event)
        if decision.reservation is not None:
            self.reservations[decision.reservation.order_id] = decision.reservation
        if decision.credit_change_cents:
            account = self.accounts[event.user_id]
            used = account.credit_used_cents + decision.credit_change_cents
            # What the database's CHECK constraint would refuse: never over-reserved, not for a moment.
            assert 0 <= used <= account.credit_limit_cents, "credit over-reserved"
            self.accounts[event.user_id] = dataclasses.replace(account, credit_used_cents=used)
        if decision.event is not None:
            self.emit(decision.event)

    def _at_orders(self, event: Event) -> None:
        assert isinstance(event, CreditReserved | CreditRejected)
        order = self.orders[event.order_id]
        if isinstance(event, CreditReserved):
            transition = orders_saga.on_credit_reserved(event.order_id, event.user_id, order.status)
        else:
            transition = orders_saga.on_credit_rejected(
                event.order_id, event.user_id, order.status, event.reason
            )
        if transition is not None:
            order.status = transition.status
            self.emit(transition.event)


def check_invariants(model: Model) -> None:
    # I1: no order stays PENDING.
    assert all(order.status is not orders_saga.OrderStatus.PENDING for order in model.orders.values())
    # I2: credit used = the approved orders' totals, within the limit.
    approved: dict[uuid.UUID, int] = collections.defaultdict(int)
    for order in model.orders.values():
        if order.status is orders_saga.OrderStatus.APPROVED:
            approved[order.user_id] += order.total_cents
    for user_id, account in model.accounts.items():
        assert account.credit_used_cents == approved[user_id]
        assert account.credit_used_cents <= account.credit_limit_cents
    # I3: no effect twice: each order's events at most once, and credit = what reservations hold.
    counts = collections.Counter((type(event).__name__, event.order_id) for event in model.emitted)  # type: ignore[attr-defined]
    assert max(counts.values(), default=1) == 1
    for user_id, account in model.accounts.items():
        held = sum(
            r.amount_cents
            for r in model.reservations.values()
            if r.user_id == user_id and r.status is users_saga.ReservationStatus.RESERVED
        )
        assert account.credit_used_cents == held


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_delivery_order_with_duplicates_ends_consistent(data: st.DataObject) -> None:
    limits = data.draw(st.lists(st.sampled_from([0, 1_000, 2_500, 10_000]), min_size=1, max_size=3))
    user_ids = [uuid.UUID(int=number) for number in range(1, len(limits) + 1)]
    accounts = {
        user_id: users_saga.Account(user_id, limit, 0)
        for user_id, limit in zip(user_ids, limits, strict=True)
    }
    model = Model(accounts=accounts)
    someone_unknown = uuid.UUID(int=999)
    users = [*accounts, someone_unknown]
    redeliveries = 0

    for _ in range(data.draw(st.integers(min_value=1, max_value=30), label="steps")):
        action = data.draw(st.sampled_from(["place", "cancel", "deliver"]))
        if action == "place":
            model.place(data.draw(st.sampled_from(users)), data.draw(st.sampled_from([0, 500, 1_000, 3_000])))
        elif action == "cancel" and model.orders:
            model.cancel(data.draw(st.sampled_from(sorted(model.orders))))
        elif action == "deliver" and model.network:
            again = redeliveries < MAX_REDELIVERIES and data.draw(st.booleans(), label="duplicate")
            redeliveries += again
            model.deliver(data.draw(st.integers(0, len(model.network) - 1), label="which"), again)

    while model.network:  # the system goes quiet: everything in flight is delivered, in any order
        again = redeliveries < MAX_REDELIVERIES and data.draw(st.booleans(), label="duplicate")
        redeliveries += again
        model.deliver(data.draw(st.integers(0, len(model.network) - 1), label="which"), again)

    check_invariants(model)


def test_a_cancel_that_overtakes_the_create_leaves_a_tombstone() -> None:
    user_id = uuid.uuid4()
    model = Model(accounts={user_id: users_saga.Account(user_id, 10_000, 0)})
    model.place(user_id, 1_000)
    (order_id,) = model.orders
    model.cancel(order_id)
    created, cancelled = model.network
    model.deliver(model.network.index(cancelled), again_later=False)
    assert model.reservations[order_id].status is users_saga.ReservationStatus.CANCELLED_BEFORE_CREATED
    model.deliver(model.network.index(created), again_later=False)
    assert model.reservations[order_id].status is users_saga.ReservationStatus.REJECTED
    (rejected,) = model.network
    assert isinstance(rejected.event, CreditRejected) and rejected.event.reason == "order_cancelled"
    model.deliver(0, again_later=False)
    assert model.orders[order_id].status is orders_saga.OrderStatus.CANCELLED
    assert model.accounts[user_id].credit_used_cents == 0
    check_invariants(model)
