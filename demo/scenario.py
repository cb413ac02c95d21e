"""The scenario: a look at the catalogue, two users, orders through the saga, an admin who raises a
credit limit, a client of version 1, and a poison message through the dead letters, each step
printed as it completes.

Every asynchronous outcome (an order decided by the saga, credit released, an event on the flow
page, a message dead-lettered) is polled or waited for with a deadline, never with a sleep: its
row's time is how long the system took.
"""

import contextlib
import dataclasses
import os
import sys
import uuid
from collections.abc import Mapping
from typing import Any, TextIO

import aiohttp
import jwt
from aio_pika.abc import AbstractConnection
from yarl import URL

from demo import poison
from demo.admin import MAKE_DEV_DATABASE_URL, admin_command
from demo.api import DEPRECATION_HEADERS, FINAL_STATUSES, Gateway, User, problem_of
from demo.flow import FlowStream, flow_stream
from demo.steps import COLUMNS, OUTCOME_COLUMN, StepFailed, Steps, wait_for
from demo.table import Table
from shared.auth import ADMIN, ROLES_CLAIM
from shared.dlq import DeadLetter
from shared.events import CreditLimitChanged
from shared.topology import EXCHANGE

# Short, so that a row's time shows how fast the system is rather than how slowly the demo looks.
POLL_INTERVAL = 0.025
# Each look at the dead letters is an AMQP connection of its own (shared/dlq.py), so less often.
DEAD_LETTER_POLL_INTERVAL = 0.1
PASSWORD = "demo-password-not-secret"
# What the stories order, by sku: products of the seeded catalogue (orders_service/migrations).
# The quantities of the rejected story are worked out from Bob's limit instead: more pianos than it
# covers, whatever the policy (NEW_USER_CREDIT_LIMIT_CENTS) is here.
APPROVED_ITEMS = (("BOOK-42", 2), ("PEN-01", 1))
CANCELLED_ITEMS = (("NOTEBOOK-A5", 2),)
VERSION_1_ITEMS = (("BOOK-1984", 1),)
DEAR = "PIANO"
# An admin raises Bob's limit to the piano's price rounded up to a whole number of these.
LIMIT_STEP_CENTS = 100_000


@dataclasses.dataclass(frozen=True)
class Settings:
    gateway_url: str
    rabbitmq_url: str
    flow_url: str
    timeout: float  # seconds to wait for each asynchronous outcome
    # users_service's, for the operator's command that makes the demo's admin (demo/admin.py).
    users_database_url: str = MAKE_DEV_DATABASE_URL


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


def items(lines: tuple[tuple[str, int], ...]) -> list[dict[str, Any]]:
    """Version 2's items: a sku and a quantity; the price is the catalogue's."""
    return [{"sku": sku, "quantity": quantity} for sku, quantity in lines]


def described(lines: list[dict[str, Any]]) -> str:
    return ", ".join(f"{line['quantity']} {line['sku']}" for line in lines)


def pricing(order: Mapping[str, Any]) -> str:
    """How orders_service priced the order: each item at the catalogue's price, and the total."""
    sums = " + ".join(f"{line['quantity']} x {money(line['unit_price_cents'])}" for line in order["items"])
    return f"{sums} = {money(order['total_cents'])}"


def roles_of(token: str) -> list[str]:
    """The roles claim of an access token, read to be shown, not trusted: the services verify it."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    roles: list[str] = claims.get(ROLES_CLAIM, [])
    return roles


class Demo:
    def __init__(self, settings: Settings, gateway: Gateway, steps: Steps, run_id: str) -> None:
        self.settings = settings
        self.gateway = gateway
        self.steps = steps
        self.run_id = run_id
        self.stories: list[Story] = []
        self.broker: AbstractConnection | None = None
        self.catalogue: dict[str, dict[str, Any]] = {}
        self.refused: list[dict[str, Any]] = []  # Bob's order that his limit does not cover
        self.alice = self.user("Alice")
        self.bob = self.user("Bob")
        self.carol = self.user("Carol")  # made an admin by the operator
        self.carol_is_admin = False

    def user(self, name: str) -> User:
        lower = name.lower()
        return User(name, f"{lower}-{self.run_id}@example.com", PASSWORD, self.story(lower))

    def story(self, name: str) -> str:
        return f"demo-{self.run_id}-{name}"

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as resources:
            await self.check_ready(resources)
            await self.browse_the_catalogue()
            await self.register_and_sign_in()
            credit_used = await self.approved_order()
            await self.rejected_order()
            await self.cancelled_order(credit_used)
            # Should the demo stop on the way, the operator's grant does not outlive it.
            resources.push_async_callback(self.revoke_if_granted)
            await self.an_admin_raises_a_limit()
            await self.the_refused_order_goes_through()
            credit_used = await self.version_1(credit_used)
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

    async def browse_the_catalogue(self) -> None:
        with self.steps.step("Browse the catalogue", "GET /api/v2/products") as step:
            products = await self.gateway.catalogue(story=self.story("catalogue"))
            self.catalogue = {product["sku"]: product for product in products}
            wanted = {sku for sku, _ in (*APPROVED_ITEMS, *CANCELLED_ITEMS, *VERSION_1_ITEMS)} | {DEAR}
            missing = sorted(wanted - set(self.catalogue))
            if missing:
                raise StepFailed(f"{len(products)} products on sale, but not {', '.join(missing)}")
            by_price = sorted(products, key=lambda product: product["price_cents"])
            cheapest, dearest = by_price[0], by_price[-1]
            step.outcome = (
                f"200 OK: {len(products)} products on sale, from {cheapest['sku']} at "
                f"{money(cheapest['price_cents'])} to {dearest['sku']} at {money(dearest['price_cents'])};"
                " no token needed"
            )

    async def register_and_sign_in(self) -> None:
        for user in (self.alice, self.bob):
            await self.register(user, f"Register {user.name}")
        for user in (self.alice, self.bob):
            with self.steps.step(f"{user.name} signs in", "POST /api/v2/auth/token") as step:
                expires_in = await self.gateway.sign_in(user)
                step.outcome = f"200 OK: a Bearer token, valid {expires_in} s"

    async def register(self, user: User, what: str) -> None:
        with self.steps.step(what, "POST /api/v2/users") as step:
            await self.gateway.register(user)
            step.outcome = (
                f"201 Created: user {short(user.id)}, limit {money(user.credit_limit_cents)} (the policy's)"
            )
        self.stories.append(Story(user.story, f"{user.name}: {user.email}, user {user.id}"))

    async def approved_order(self) -> int:
        """Alice's order, within her limit: APPROVED. Her credit used afterwards."""
        story = self.story("approved")
        order = await self.place(self.alice, items(APPROVED_ITEMS), story)
        with self.steps.step("...the saga decides", "GET /api/v2/orders/{id}, polled") as step:
            decided = await self.decided(self.alice, order, story, expect="APPROVED")
            credit_used: int = (await self.gateway.me(self.alice, story=story))["credit_used_cents"]
            limit = self.alice.credit_limit_cents
            step.outcome = f"{decided['status']}: credit used {money(credit_used)} of {money(limit)}"
        self.stories.append(Story(story, f"order {order['id']}, APPROVED"))
        return credit_used

    def dear_items(self) -> list[dict[str, Any]]:
        """As many of the dearest product as it takes to go over Bob's limit."""
        price = self.catalogue[DEAR]["price_cents"]
        if price == 0:
            raise StepFailed(f"{DEAR} costs nothing here: no quantity goes over a limit")
        return items(((DEAR, self.bob.credit_limit_cents // price + 1),))

    async def rejected_order(self) -> None:
        """Bob's order, above his limit: REJECTED for insufficient credit."""
        story = self.story("rejected")
        self.refused = self.dear_items()
        order = await self.place(self.bob, self.refused, story)
        with self.steps.step(
            f"...above his {money(self.bob.credit_limit_cents)} limit", "GET /api/v2/orders/{id}, polled"
        ) as step:
            decided = await self.decided(self.bob, order, story, expect="REJECTED")
            if decided["rejection_reason"] != "insufficient_credit":
                raise StepFailed(f"REJECTED for {decided['rejection_reason']}, expected insufficient_credit")
            step.outcome = f"REJECTED: {decided['rejection_reason']}"
        self.stories.append(Story(story, f"order {order['id']}, REJECTED"))

    async def approved_with_its_credit(
        self, user: User, order: dict[str, Any], story: str, credit_used: int
    ) -> int:
        """Wait for `order` to be approved, and check that it reserved its total on top of
        `credit_used`; the credit used now."""
        reserved: int = credit_used + order["total_cents"]
        await self.decided(user, order, story, expect="APPROVED")
        now_used = (await self.gateway.me(user, story=story))["credit_used_cents"]
        if now_used != reserved:
            raise StepFailed(f"APPROVED, but credit used {money(now_used)}, expected {money(reserved)}")
        return reserved

    async def cancelled_order(self, credit_used: int) -> None:
        """Alice's second order, approved and then cancelled: her credit is released."""
        story = self.story("cancelled")
        order = await self.place(self.alice, items(CANCELLED_ITEMS), story)
        with self.steps.step("...the saga decides", "GET /api/v2/orders/{id}, polled") as step:
            reserved = await self.approved_with_its_credit(self.alice, order, story, credit_used)
            step.outcome = f"APPROVED: credit used {money(credit_used)} -> {money(reserved)}"
        with self.steps.step("Alice cancels it", "POST /api/v2/orders/{id}/cancel") as step:
            cancelled = await self.gateway.cancel(self.alice, order["id"], story=story)
            if cancelled["status"] != "CANCELLED":
                raise StepFailed(f"202 Accepted, but {cancelled['status']}, expected CANCELLED")
            step.outcome = "202 Accepted: CANCELLED"
        with self.steps.step("...her credit is released", "GET /api/v2/users/me, polled") as step:
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

    async def an_admin_raises_a_limit(self) -> None:
        """Carol is made an admin by the operator's command, the only way there is; Bob cannot raise
        his own limit, Carol can, and the change is announced as an event."""
        carol, story = self.carol, self.story("limit")
        await self.register(carol, "Register Carol, to be an admin")
        with self.steps.step(
            "An operator makes Carol an admin", "python -m users_service.admin grant"
        ) as step:
            step.outcome = await self.admin("grant", carol.email)
            self.carol_is_admin = True
        with self.steps.step("Carol signs in", "POST /api/v2/auth/token") as step:
            await self.gateway.sign_in(carol)
            roles = roles_of(carol.token)
            if ADMIN not in roles:
                raise StepFailed(f"200 OK, but the token's roles are {roles}, expected {ADMIN}")
            step.outcome = f"200 OK: a Bearer token, roles: {', '.join(roles)}"
        previous = self.bob.credit_limit_cents
        refused_total = sum(
            line["quantity"] * self.catalogue[line["sku"]]["price_cents"] for line in self.refused
        )
        raised = -(-refused_total // LIMIT_STEP_CENTS) * LIMIT_STEP_CENTS
        with self.steps.step(
            "Bob tries to raise his own limit", "PUT /api/v2/users/{id}/credit-limit"
        ) as step:
            forbidden = await self.gateway.set_credit_limit(
                self.bob, self.bob.id, raised, story=story, expect=403
            )
            step.outcome = f"403 Forbidden: {forbidden.get('detail', '')}"
        async with contextlib.AsyncExitStack() as watching:
            with self.steps.step("Carol raises Bob's limit", "PUT /api/v2/users/{id}/credit-limit") as step:
                # Open before the change: its event cannot pass before the demo looks.
                flow = await watching.enter_async_context(
                    flow_stream(self.gateway.session, self.settings.gateway_url, story=story)
                )
                changed = await self.gateway.set_credit_limit(carol, self.bob.id, raised, story=story)
                self.bob.credit_limit_cents = changed["credit_limit_cents"]
                step.outcome = (
                    f"200 OK: Bob's limit {money(previous)} -> {money(self.bob.credit_limit_cents)}"
                )
            await self.limit_change_on_the_flow_page(flow, story)
        with self.steps.step("...and takes it back", "python -m users_service.admin revoke") as step:
            step.outcome = await self.admin("revoke", carol.email)
            self.carol_is_admin = False
        self.stories.append(
            Story(story, f"Bob's limit {money(previous)} -> {money(self.bob.credit_limit_cents)}, by Carol")
        )

    async def limit_change_on_the_flow_page(self, flow: FlowStream, story: str) -> None:
        with self.steps.step("...on the flow page", "GET /flow/events") as step:

            def the_change(record: dict[str, Any]) -> bool:
                return (
                    record.get("kind") == "event.published"
                    and record.get("type") == CreditLimitChanged.TYPE
                    and record.get("correlation_id") == story
                )

            record = await flow.record(
                the_change, within=self.settings.timeout, what=f"{CreditLimitChanged.TYPE} of {story}"
            )
            data = (record.get("envelope") or {}).get("data") or {}
            step.outcome = (
                f"{record['type']} from {record['from']}: "
                f"{money(data['previous_credit_limit_cents'])} -> {money(data['credit_limit_cents'])}"
            )

    async def admin(self, action: str, email: str) -> str:
        return await admin_command(
            action, email, database_url=self.settings.users_database_url, within=self.settings.timeout
        )

    async def revoke_if_granted(self) -> None:
        """The demo stopped between the grant and its revocation: revoke now, saying so only if that
        fails too (the failure the demo stopped at is the news)."""
        if not self.carol_is_admin:
            return
        try:
            await self.admin("revoke", self.carol.email)
        except StepFailed as failure:
            print(f"The demo's admin {self.carol.email} keeps the role: {failure}", file=sys.stderr)

    async def the_refused_order_goes_through(self) -> None:
        """Bob's order of before, placed again: within his new limit, APPROVED."""
        story = self.story("raised")
        order = await self.place(self.bob, self.refused, story, again=True)
        with self.steps.step("...within his new limit", "GET /api/v2/orders/{id}, polled") as step:
            decided = await self.decided(self.bob, order, story, expect="APPROVED")
            credit_used = (await self.gateway.me(self.bob, story=story))["credit_used_cents"]
            limit = self.bob.credit_limit_cents
            step.outcome = f"{decided['status']}: credit used {money(credit_used)} of {money(limit)}"
        self.stories.append(Story(story, f"order {order['id']}, APPROVED after the raise"))

    async def version_1(self, credit_used: int) -> int:
        """A client of version 1 (deprecated) is still served, and told so on every answer; it still
        sends prices, which must be the catalogue's. Alice's credit used afterwards."""
        story = self.story("v1")
        sent = [
            {**line, "unit_price_cents": self.catalogue[line["sku"]]["price_cents"]}
            for line in items(VERSION_1_ITEMS)
        ]
        with self.steps.step("Alice orders on version 1", "POST /api/orders") as step:
            placed = await self.gateway.place_order_v1(self.alice, sent, story=story, expect=202)
            order = placed.body
            step.outcome = (
                f"202 Accepted: order {short(order['id'])} {order['status']}, {pricing(order)}; "
                + deprecation(placed.headers)
            )
        with self.steps.step("...at a price of her own", "POST /api/orders") as step:
            wrong = [{**line, "unit_price_cents": line["unit_price_cents"] - 1} for line in sent]
            refused = await self.gateway.place_order_v1(self.alice, wrong, story=story, expect=422)
            deprecation(refused.headers)
            pointers = [error["pointer"] for error in refused.body.get("errors") or []]
            if pointers != ["#/items/0/unit_price_cents"]:
                raise StepFailed(f"422, but for {pointers or problem_of(refused.body)}, expected the price")
            [error] = refused.body["errors"]
            step.outcome = f"422 {refused.body['title']}: {error['pointer']} {error['detail']}"
        with self.steps.step("...the saga decides", "GET /api/v2/orders/{id}, polled") as step:
            reserved = await self.approved_with_its_credit(self.alice, order, story, credit_used)
            step.outcome = (
                f"APPROVED, read on version 2: credit used {money(credit_used)} -> {money(reserved)}"
            )
        self.stories.append(Story(story, f"order {order['id']}, placed on version 1, APPROVED"))
        return reserved

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
        with self.steps.step("Alice's credit is untouched", "GET /api/v2/users/me") as step:
            now_used = (await self.gateway.me(self.alice, story=story))["credit_used_cents"]
            if now_used != credit_used:
                raise StepFailed(f"credit used {money(now_used)}, expected {money(credit_used)}")
            step.outcome = f"credit used still {money(now_used)}"
        self.stories.append(Story(story, f"event {event_id}, left in {poison.DEAD_LETTER_QUEUE}"))

    async def place(
        self, user: User, lines: list[dict[str, Any]], story: str, *, again: bool = False
    ) -> dict[str, Any]:
        what = f"{user.name} orders {described(lines)}{' again' if again else ''}"
        with self.steps.step(what, "POST /api/v2/orders") as step:
            order = await self.gateway.place_order(user, lines, story=story)
            step.outcome = f"202 Accepted: order {short(order['id'])} {order['status']}, {pricing(order)}"
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


def deprecation(headers: Mapping[str, str]) -> str:
    """The deprecation headers of a version 1 answer, briefly (the Link by its target); one missing
    fails the step: a client of version 1 is to be told on every answer."""
    missing = [name for name in DEPRECATION_HEADERS if name not in headers]
    if missing:
        raise StepFailed(f"a version 1 answer without {', '.join(missing)}")
    link_target = headers["Link"].split(";", 1)[0]
    return f"Deprecation {headers['Deprecation']}, Sunset {headers['Sunset']}, Link {link_target}"


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
