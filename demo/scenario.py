"""The scenario: two users, three orders through the saga, and a poison message through the dead
letters, each step printed as it completes.

Every asynchronous outcome (an order decided by the saga, credit released, a message dead-lettered)
is polled for with a deadline, never waited for with a sleep: its row's time is how long the system
took.
"""

import contextlib
import dataclasses
import os
import sys
import uuid
from typing import Any, TextIO

import aiohttp
from aio_pika.abc import AbstractConnection
from yarl import URL

from demo import poison
from demo.api import FINAL_STATUSES, Gateway, User
from demo.steps import COLUMNS, OUTCOME_COLUMN, StepFailed, Steps, wait_for
from demo.table import Table
from shared.dlq import DeadLetter
from shared.topology import EXCHANGE

# Short, so that a row's time shows how fast the system is rather than how slowly the demo looks.
POLL_INTERVAL = 0.025
# Each look at the dead letters is an AMQP connection of its own (shared/dlq.py), so less often.
DEAD_LETTER_POLL_INTERVAL = 0.1
PASSWORD = "demo-password-not-secret"
ALICE_LIMIT_CENTS = 100_000
BOB_LIMIT_CENTS = 5_000


@dataclasses.dataclass(frozen=True)
class Settings:
    gateway_url: str
    rabbitmq_url: str
    flow_url: str
    timeout: float  # seconds to wait for each asynchronous outcome


@dataclasses.dataclass(frozen=True)
class Story:
    """What the user can look up afterwards: a correlation id and what it is about."""

    correlation_id: str
    about: str


def money(cents: int) -> str:
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def short(uuid_text: str) -> str:
    """The first eight hex digits, as the services' logs show ids."""
    return uuid_text[:8]


def item(sku: str, quantity: int, unit_price_cents: int) -> dict[str, Any]:
    return {"sku": sku, "quantity": quantity, "unit_price_cents": unit_price_cents}


def total(items: list[dict[str, Any]]) -> int:
    return sum(line["quantity"] * line["unit_price_cents"] for line in items)


class Demo:
    def __init__(self, settings: Settings, gateway: Gateway, steps: Steps, run_id: str) -> None:
        self.settings = settings
        self.gateway = gateway
        self.steps = steps
        self.run_id = run_id
        self.stories: list[Story] = []
        self.broker: AbstractConnection | None = None
        self.alice = User(
            "Alice", f"alice-{run_id}@example.com", PASSWORD, ALICE_LIMIT_CENTS, self.story("alice")
        )
        self.bob = User("Bob", f"bob-{run_id}@example.com", PASSWORD, BOB_LIMIT_CENTS, self.story("bob"))

    def story(self, name: str) -> str:
        return f"demo-{self.run_id}-{name}"

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as resources:
            await self.check_ready(resources)
            await self.register_and_sign_in()
            credit_used = await self.approved_order()
            await self.rejected_order()
            await self.cancelled_order(credit_used)
            await self.poison_message(credit_used)

    async def check_ready(self, resources: contextlib.AsyncExitStack) -> None:
        with self.steps.step("The system is up", "GET /readyz, AMQP connect") as step:
            try:
                answer = await self.gateway.call("GET", "/readyz", story=self.story("ready"), expect=200)
            except aiohttp.ClientConnectorError as error:
                reason = os.strerror(error.errno) if error.errno else str(error.os_error)
                raise StepFailed(f"nothing answers at {self.settings.gateway_url} ({reason})") from None
            except StepFailed as failure:
                raise StepFailed(f"the gateway is not ready: {failure}") from None
            try:
                self.broker = await poison.connect(self.settings.rabbitmq_url)
            except Exception as error:
                address = poison.broker_address(self.settings.rabbitmq_url)
                raise StepFailed(
                    f"the gateway is ready, but RabbitMQ at {address} is not reachable ({error})"
                ) from None
            resources.push_async_callback(self.broker.close)
            ready = ", ".join(["gateway", *answer["checks"], "broker"])
            step.outcome = f"ready: {ready}"

    async def register_and_sign_in(self) -> None:
        for user in (self.alice, self.bob):
            with self.steps.step(
                f"Register {user.name}, limit {money(user.credit_limit_cents)}", "POST /api/users"
            ) as step:
                await self.gateway.register(user)
                step.outcome = f"201 Created: user {short(user.id)}"
            self.stories.append(Story(user.story, f"{user.name}: {user.email}, user {user.id}"))
        for user in (self.alice, self.bob):
            with self.steps.step(f"{user.name} signs in", "POST /api/auth/token") as step:
                expires_in = await self.gateway.sign_in(user)
                step.outcome = f"200 OK: a Bearer token, valid {expires_in} s"

    async def approved_order(self) -> int:
        """Alice's order, within her limit: APPROVED. Her credit used afterwards."""
        story = self.story("approved")
        order = await self.place(self.alice, [item("KEYBOARD", 1, 12_000)], story, "Alice orders a keyboard")
        with self.steps.step("...the saga decides", "GET /api/orders/{id}, polled") as step:
            decided = await self.decided(self.alice, order, story, expect="APPROVED")
            credit_used: int = (await self.gateway.me(self.alice, story=story))["credit_used_cents"]
            step.outcome = (
                f"{decided['status']}: credit used {money(credit_used)} of {money(ALICE_LIMIT_CENTS)}"
            )
        self.stories.append(Story(story, f"order {order['id']}, APPROVED"))
        return credit_used

    async def rejected_order(self) -> None:
        """Bob's order, above his limit: REJECTED for insufficient credit."""
        story = self.story("rejected")
        order = await self.place(self.bob, [item("MONITOR", 1, 25_000)], story, "Bob orders a monitor")
        with self.steps.step(
            f"...above his {money(BOB_LIMIT_CENTS)} limit", "GET /api/orders/{id}, polled"
        ) as step:
            decided = await self.decided(self.bob, order, story, expect="REJECTED")
            if decided["rejection_reason"] != "insufficient_credit":
                raise StepFailed(f"REJECTED for {decided['rejection_reason']}, expected insufficient_credit")
            step.outcome = f"REJECTED: {decided['rejection_reason']}"
        self.stories.append(Story(story, f"order {order['id']}, REJECTED"))

    async def cancelled_order(self, credit_used: int) -> None:
        """Alice's second order, approved and then cancelled: her credit is released."""
        story = self.story("cancelled")
        cables = [item("USB-C-CABLE", 2, 1_500)]
        order = await self.place(self.alice, cables, story, "Alice orders two cables")
        reserved = credit_used + total(cables)
        with self.steps.step("...the saga decides", "GET /api/orders/{id}, polled") as step:
            await self.decided(self.alice, order, story, expect="APPROVED")
            now_used = (await self.gateway.me(self.alice, story=story))["credit_used_cents"]
            if now_used != reserved:
                raise StepFailed(f"APPROVED, but credit used {money(now_used)}, expected {money(reserved)}")
            step.outcome = f"APPROVED: credit used {money(credit_used)} -> {money(reserved)}"
        with self.steps.step("Alice cancels it", "POST /api/orders/{id}/cancel") as step:
            cancelled = await self.gateway.cancel(self.alice, order["id"], story=story)
            if cancelled["status"] != "CANCELLED":
                raise StepFailed(f"202 Accepted, but {cancelled['status']}, expected CANCELLED")
            step.outcome = "202 Accepted: CANCELLED"
        with self.steps.step("...her credit is released", "GET /api/users/me, polled") as step:
            seen = reserved

            async def released() -> int | None:
                nonlocal seen
                seen = (await self.gateway.me(self.alice, story=story))["credit_used_cents"]
                return seen if seen == credit_used else None

            await wait_for(
                released,
                within=self.settings.timeout,
                interval=POLL_INTERVAL,
                on_timeout=lambda: (
                    f"credit used still {money(seen)} after {self.settings.timeout:g} s, "
                    f"expected {money(credit_used)}"
                ),
            )
            step.outcome = f"credit used {money(reserved)} -> {money(credit_used)}"
        self.stories.append(Story(story, f"order {order['id']}, CANCELLED"))

    async def poison_message(self, credit_used: int) -> None:
        story = self.story("poison")
        envelope = poison.poison_order_created(self.alice.id, -50_000, story=story)
        event_id = str(envelope.id)
        with self.steps.step("A bad producer's event", f"AMQP publish to {EXCHANGE}") as step:
            assert self.broker is not None
            await poison.publish(self.broker, envelope)
            step.outcome = (
                f"confirmed: {envelope.type} {short(event_id)}, total_cents -50000 "
                f"(would give Alice {money(50_000)})"
            )
        with self.steps.step(
            "users_service refuses it at once", f"get {poison.DEAD_LETTER_QUEUE}, polled"
        ) as step:
            first = await self.dead_letter(event_id)
            step.outcome = f"dead-lettered at once ({first.reason}): {first.error}"
        with self.steps.step("Replay it", f"dlq replay --id {short(event_id)}") as step:

            async def replayed() -> list[DeadLetter] | None:
                # Retried: while another reader (`make dlq`, a second demo) holds the dead letters,
                # this one is not to be seen for a moment.
                return await poison.replay(self.settings.rabbitmq_url, event_id) or None

            await wait_for(
                replayed,
                within=self.settings.timeout,
                interval=DEAD_LETTER_POLL_INTERVAL,
                on_timeout=lambda: f"{short(event_id)} not in {poison.DEAD_LETTER_QUEUE} to replay",
            )
            step.outcome = f"back on the {poison.SERVICE} queue, as a first attempt"
        with self.steps.step("...it is still poison", f"get {poison.DEAD_LETTER_QUEUE}, polled") as step:
            again = await self.dead_letter(event_id, not_at=first.dead_lettered_at)
            step.outcome = (
                f"dead-lettered again ({again.reason}): replay is for messages whose cause "
                "has been fixed, and this event is wrong for good"
            )
        with self.steps.step("Alice's credit is untouched", "GET /api/users/me") as step:
            now_used = (await self.gateway.me(self.alice, story=story))["credit_used_cents"]
            if now_used != credit_used:
                raise StepFailed(f"credit used {money(now_used)}, expected {money(credit_used)}")
            step.outcome = f"credit used still {money(now_used)}"
        self.stories.append(Story(story, f"event {event_id}, left in {poison.DEAD_LETTER_QUEUE}"))

    async def place(self, user: User, items: list[dict[str, Any]], story: str, what: str) -> dict[str, Any]:
        with self.steps.step(f"{what} ({money(total(items))})", "POST /api/orders") as step:
            order = await self.gateway.place_order(user, items, story=story)
            step.outcome = f"202 Accepted: order {short(order['id'])} {order['status']}"
        return order

    async def decided(self, user: User, order: dict[str, Any], story: str, *, expect: str) -> dict[str, Any]:
        """The order once the saga has decided it; a decision other than `expect` fails the step."""
        seen = order["status"]

        async def final() -> dict[str, Any] | None:
            nonlocal seen
            current = await self.gateway.order(user, order["id"], story=story)
            seen = current["status"]
            return current if seen in FINAL_STATUSES else None

        decided = await wait_for(
            final,
            within=self.settings.timeout,
            interval=POLL_INTERVAL,
            on_timeout=lambda: f"still {seen} after {self.settings.timeout:g} s, expected {expect}",
        )
        if decided["status"] != expect:
            reason = f" ({decided['rejection_reason']})" if decided.get("rejection_reason") else ""
            raise StepFailed(f"{decided['status']}{reason}, expected {expect}")
        return decided

    async def dead_letter(self, event_id: str, *, not_at: str | None = None) -> DeadLetter:
        return await wait_for(
            lambda: poison.find_dead_letter(self.settings.rabbitmq_url, event_id, not_at=not_at),
            within=self.settings.timeout,
            interval=DEAD_LETTER_POLL_INTERVAL,
            on_timeout=lambda: (
                f"{short(event_id)} not in {poison.DEAD_LETTER_QUEUE} after {self.settings.timeout:g} s"
            ),
        )

    def print_summary(self, out: TextIO) -> None:
        print(f"\nAll {self.steps.count} steps ended as expected.", file=out)
        this_run = URL(self.settings.flow_url).update_query(filter=f"demo-{self.run_id}")
        print(f"Watch this run on the flow page: {this_run}", file=out)
        print(
            "Its stories: filter the page by one's correlation id (or by an order id) to follow it.", file=out
        )
        width = max(len(story.correlation_id) for story in self.stories)
        for story in self.stories:
            print(f"  {story.correlation_id.ljust(width)}  {story.about}", file=out)
        print(
            f"The poison event stays in {poison.DEAD_LETTER_QUEUE}: `make dlq` lists it "
            f"(python -m shared.dlq list {poison.SERVICE}).",
            file=out,
        )


async def run(
    settings: Settings, *, out: TextIO = sys.stdout, width: int = 120, colour: bool = False
) -> Demo:
    """Run the scenario; DemoFailed if a step does not end as expected."""
    run_id = uuid.uuid4().hex[:8]
    table = Table(COLUMNS, width=width, out=out, colour=colour, status_column=OUTCOME_COLUMN)
    async with aiohttp.ClientSession() as session:
        demo = Demo(settings, Gateway(session, settings.gateway_url), Steps(table), run_id)
        await demo.run()
    demo.print_summary(out)
    return demo
