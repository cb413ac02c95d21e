"""Property: whatever the interleaving, duplication and reordering of the saga's messages, whether
they are applied one at a time or in batches that a failure rolls back (shared/inbox.py), and
whichever of them are lost for good (dead-lettered, never replayed), once the deadlines have passed
and everything in flight is delivered, the state satisfies I1 to I3: every saga ended, the credit is
exact, no effect was applied twice.

The model runs both services' real decision functions (`users_service.saga`, `orders_service.saga`)
with an inbox each, over a "network" that delivers any pending message next, may deliver one again,
or may lose one; orders_service's deadline sweep (orders_service/deadlines.py) rejects PENDING
orders and announces unanswered ends again. Only the storage is in memory; the decisions are the
production code.
"""

import collections
import copy
import dataclasses
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orders_service import saga as orders_saga
from shared.events import (
    CreditRejected,
    CreditReleased,
    CreditReserved,
    Event,
    OrderApproved,
    OrderCancelled,
    OrderCreated,
    OrderRejected,
)
from users_service import saga as users_saga

ACTIONS = ("place", "cancel", "deliver", "deliver together", "deadline", "announce", "lose")
MAX_REDELIVERIES = 20
MAX_LOST = 5
TO_USERS = OrderCreated | OrderCancelled | OrderRejected
TO_ORDERS = CreditReserved | CreditRejected | CreditReleased


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
    credit_settled: bool = False
    rejection_reason: str | None = None
    cancelled_from: orders_saga.OrderStatus | None = None

    def apply(self, transition: orders_saga.Transition) -> None:
        self.status = transition.status
        self.credit_settled = transition.credit_settled
        self.rejection_reason = transition.rejection_reason
        self.cancelled_from = transition.cancelled_from


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
        if isinstance(event, TO_USERS):
            self.network.append(Message(self.next_id, event, "users"))
        elif isinstance(event, TO_ORDERS):
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
            order.apply(transition)
            self.emit(transition.event)

    def pass_deadline(self, order_id: uuid.UUID) -> None:
        """The sweep finds the order past its deadline (orders_service/deadlines.py)."""
        order = self.orders[order_id]
        transition = orders_saga.on_deadline(order_id, order.user_id, order.status)
        if transition is not None:
            order.apply(transition)
            self.emit(transition.event)

    def announce_again(self, order_id: uuid.UUID) -> None:
        """The sweep announces an end that users_service has not answered yet."""
        order = self.orders[order_id]
        if order.status in ENDED and not order.credit_settled:
            self.emit(
                orders_saga.announcement(
                    order_id, order.user_id, order.status, order.rejection_reason, order.cancelled_from
                )
            )

    def lose(self, index: int) -> None:
        """The message is dead-lettered, and nobody replays it."""
        self.network.pop(index)

    def deliver(self, index: int, again_later: bool) -> None:
        self._apply(self.network[index] if again_later else self.network.pop(index))

    def deliver_together(self, to: str, indexes: list[int], failing: int | None) -> None:
        """A consumer applies the messages it holds together, in one transaction (shared/inbox.py).
        If one of them fails, the whole batch rolls back and each is applied again alone: the failing
        one fails again, and goes back to be retried later; the others take effect once."""
        held = [message for message in self.network if message.to == to]
        batch = [held[index] for index in sorted({index % len(held) for index in indexes})]
        for message in batch:
            self.network.remove(message)
        before = copy.deepcopy(
            (self.accounts, self.reservations, self.orders, self.inboxes, self.network, self.emitted)
        )
        if failing is not None:
            failing %= len(batch)
        try:
            for position, message in enumerate(batch):
                if position == failing:
                    raise HandlerFailed
                self._apply(message)
        except HandlerFailed:
            self.accounts, self.reservations, self.orders, self.inboxes, self.network, self.emitted = before
            for position, message in enumerate(batch):
                if position == failing:
                    self.network.append(message)  # retried later
                else:
                    self._apply(message)

    def _apply(self, message: Message) -> None:
        inbox = self.inboxes[message.to]
        if message.event_id in inbox:
            return  # a duplicate: the inbox skips it
        inbox.add(message.event_id)
        if message.to == "users":
            self._at_users(message.event)
        else:
            self._at_orders(message.event)

    def _at_users(self, event: Event) -> None:
        assert isinstance(event, TO_USERS)
        existing = self.reservations.get(event.order_id)
        if isinstance(event, OrderCreated):
            decision = users_saga.on_order_created(self.accounts.get(event.user_id), existing, event)
        elif isinstance(event, OrderCancelled):
            decision = users_saga.on_order_cancelled(existing, event)
        else:
            decision = users_saga.on_order_rejected(existing, event)
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
        assert isinstance(event, TO_ORDERS)
        order = self.orders[event.order_id]
        if isinstance(event, CreditReleased):
            order.credit_settled = True  # as orders_service/handlers.py notes it
            return
        if isinstance(event, CreditReserved):
            transition = orders_saga.on_credit_reserved(event.order_id, event.user_id, order.status)
        else:
            transition = orders_saga.on_credit_rejected(
                event.order_id, event.user_id, order.status, event.reason
            )
            if transition is None:
                order.credit_settled = True  # an ended order: nothing is held for it
        if transition is not None:
            order.apply(transition)
            self.emit(transition.event)

    def quiesce(self, draw: st.DataObject, redeliveries: int) -> None:
        """The deadlines pass and nothing more is lost: deliver everything in flight, in any order,
        and let the sweep reject and announce, until nothing is left to do."""
        while True:
            for order_id in sorted(self.orders):
                self.pass_deadline(order_id)
                self.announce_again(order_id)
            if not self.network:
                return
            while self.network:
                again = redeliveries < MAX_REDELIVERIES and draw.draw(st.booleans(), label="duplicate")
                redeliveries += again
                self.deliver(draw.draw(st.integers(0, len(self.network) - 1), label="which"), again)


class HandlerFailed(Exception):
    """A handler's failure in the middle of a batch: the model's poison message."""


ENDED = frozenset({orders_saga.OrderStatus.CANCELLED, orders_saga.OrderStatus.REJECTED})


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
    # Every ended order has users_service's answer: nothing is held for it beyond what I2 counts.
    assert all(order.credit_settled for order in model.orders.values() if order.status in ENDED)
    # I3: no effect twice: each order created, reserved and approved at most once (an end and its
    # answer may be announced again, by design), and credit = what reservations hold.
    once = OrderCreated | CreditReserved | OrderApproved
    counts = collections.Counter(
        (type(event).__name__, event.order_id) for event in model.emitted if isinstance(event, once)
    )
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
    redeliveries = lost = 0

    for _ in range(data.draw(st.integers(min_value=1, max_value=30), label="steps")):
        action = data.draw(st.sampled_from(ACTIONS))
        if action == "place":
            model.place(data.draw(st.sampled_from(users)), data.draw(st.sampled_from([0, 500, 1_000, 3_000])))
        elif action in ("cancel", "deadline", "announce") and model.orders:
            order_id = data.draw(st.sampled_from(sorted(model.orders)))
            {"cancel": model.cancel, "deadline": model.pass_deadline, "announce": model.announce_again}[
                action
            ](order_id)
        elif action == "deliver" and model.network:
            again = redeliveries < MAX_REDELIVERIES and data.draw(st.booleans(), label="duplicate")
            redeliveries += again
            model.deliver(data.draw(st.integers(0, len(model.network) - 1), label="which"), again)
        elif action == "deliver together" and model.network:
            to = data.draw(st.sampled_from(sorted({message.to for message in model.network})), label="to")
            indexes = data.draw(st.lists(st.integers(0, 15), min_size=1, max_size=16), label="held")
            failing = data.draw(st.none() | st.integers(0, 15), label="failing")
            model.deliver_together(to, indexes, failing)
        elif action == "lose" and model.network and lost < MAX_LOST:
            lost += 1
            model.lose(data.draw(st.integers(0, len(model.network) - 1), label="which is lost"))

    model.quiesce(data, redeliveries)
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
    # Both the end (answered at once) and the late create are answered "nothing held".
    answers = [message.event for message in model.network]
    assert all(isinstance(a, CreditRejected) and a.reason == "order_cancelled" for a in answers), answers
    while model.network:
        model.deliver(0, again_later=False)
    assert model.orders[order_id].status is orders_saga.OrderStatus.CANCELLED
    assert model.orders[order_id].credit_settled
    assert model.accounts[user_id].credit_used_cents == 0
    check_invariants(model)


def test_an_order_whose_create_is_lost_ends_by_its_deadline_and_a_late_reservation_is_released() -> None:
    user_id = uuid.uuid4()
    model = Model(accounts={user_id: users_saga.Account(user_id, 10_000, 0)})
    model.place(user_id, 1_000)
    (order_id,) = model.orders
    (created,) = model.network
    model.pass_deadline(order_id)  # the create has not arrived: the system rejects the order
    assert model.orders[order_id].rejection_reason == orders_saga.DEADLINE_EXCEEDED
    model.deliver(model.network.index(created), again_later=False)  # it comes late after all...
    assert model.reservations[order_id].status is users_saga.ReservationStatus.RESERVED
    while model.network:  # ...and the end releases what it reserved
        model.deliver(0, again_later=False)
    assert model.reservations[order_id].status is users_saga.ReservationStatus.RELEASED
    assert model.accounts[user_id].credit_used_cents == 0
    check_invariants(model)


def test_a_lost_cancel_is_announced_again_until_the_credit_is_released() -> None:
    user_id = uuid.uuid4()
    model = Model(accounts={user_id: users_saga.Account(user_id, 10_000, 0)})
    model.place(user_id, 1_000)
    (order_id,) = model.orders
    while model.network:
        model.deliver(0, again_later=False)
    assert model.orders[order_id].status is orders_saga.OrderStatus.APPROVED
    model.cancel(order_id)
    model.lose(0)  # the cancel is dead-lettered, and nobody replays it
    assert model.accounts[user_id].credit_used_cents == 1_000
    model.announce_again(order_id)  # a deadline later, the sweep announces it again
    while model.network:
        model.deliver(0, again_later=False)
    assert model.accounts[user_id].credit_used_cents == 0
    check_invariants(model)
