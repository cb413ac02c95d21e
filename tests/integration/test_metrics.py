"""/metrics of the services, read the way Prometheus reads them, after real traffic and real events."""

import uuid
from collections.abc import Awaitable, Callable

from prometheus_client.parser import text_string_to_metric_families

from devstack.rabbitmq import Vhost
from devstack.waiting import eventually
from shared.app_keys import DB_POOL
from shared.envelope import Envelope
from shared.events import CreditReserved, OrderCreated
from tests.integration.conftest import Client, new_product
from tests.support import publish_raw
from tests.unit.event_samples import CAUSE

TokenFor = Callable[[uuid.UUID], dict[str, str]]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: Client) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(await response.text())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def until(client: Client, check: Callable[[Samples], bool]) -> Callable[[], Awaitable[bool]]:
    async def scraped() -> bool:
        return check(await scrape(client))

    return scraped


async def test_one_order_is_counted_at_every_step_of_its_saga(
    users_client: Client, orders_client: Client, token_for: TokenFor, admin_headers: dict[str, str]
) -> None:
    registered = await users_client.post(
        "/api/v2/users", json={"email": "metrics@example.com", "name": "Ada", "password": "long-enough"}
    )
    user_id = uuid.UUID((await registered.json())["id"])
    order = {"items": [{"sku": await new_product(orders_client, admin_headers, 300), "quantity": 2}]}
    placed = await orders_client.post("/api/v2/orders", json=order, headers=token_for(user_id))
    assert placed.status == 202
    order_id = (await placed.json())["id"]

    def saga_ended(samples: Samples) -> bool:
        return value(samples, "events_published_total", type="orders.order.approved") == 1

    await eventually(until(orders_client, saga_ended), what="orders.order.approved published")
    orders = await scrape(orders_client)
    users = await scrape(users_client)

    assert value(orders, "http_requests_total", method="POST", route="/api/v2/orders", status="202") == 1
    assert value(orders, "http_request_duration_seconds_count", method="POST", route="/api/v2/orders") == 1
    assert value(orders, "events_published_total", type="orders.order.created") == 1
    assert value(orders, "events_consumed_total", type="users.credit.reserved") == 1
    assert value(orders, "saga_duration_seconds_count", outcome="APPROVED") == 1
    assert 0 < value(orders, "saga_duration_seconds_sum", outcome="APPROVED") < 10
    assert value(users, "http_requests_total", method="POST", route="/api/v2/users", status="201") == 1
    assert value(users, "events_published_total", type="users.user.registered") == 1
    assert value(users, "events_consumed_total", type="orders.order.created") == 1
    assert value(users, "events_published_total", type="users.credit.reserved") == 1
    assert "saga_duration_seconds_count" not in {name for name, _ in users}  # the saga is orders'
    # Routes are templates: an order id never becomes a label, so series do not grow per order.
    assert all(order_id not in label for _, labels in orders for _, label in labels)

    def caught_up(samples: Samples) -> bool:
        return value(samples, "outbox_unpublished_events") == 0 and value(samples, "outbox_lag_seconds") == 0

    await eventually(until(orders_client, caught_up), what="orders_service's outbox published")

    cancelled = await orders_client.post(f"/api/v2/orders/{order_id}/cancel", headers=token_for(user_id))
    assert cancelled.status == 202
    after_cancel = await scrape(orders_client)
    # Cancelling an APPROVED order is not the end of a saga: it had ended at APPROVED.
    assert value(after_cancel, "saga_duration_seconds_count", outcome="CANCELLED") == 0


async def test_duplicates_and_dead_letters_are_counted_by_type(users_client: Client, broker: Vhost) -> None:
    event = OrderCreated(uuid.uuid4(), uuid.uuid4(), 100)
    body = Envelope.wrap(event, source="orders_service", cause=CAUSE).to_json()
    # As its publisher would send it (a buggy one, for the last body).
    for published in (body, body, b"{not json"):
        await publish_raw(broker, published, OrderCreated.TYPE)

    def all_three_counted(samples: Samples) -> bool:
        return (
            value(samples, "events_consumed_total", type=OrderCreated.TYPE) == 1
            and value(samples, "events_duplicates_total", type=OrderCreated.TYPE) == 1
            and value(samples, "events_dead_lettered_total", type=OrderCreated.TYPE) == 1
        )

    await eventually(
        until(users_client, all_three_counted), what="one consumed, one duplicate, one dead letter"
    )


async def test_a_failing_handler_is_counted_as_retried(orders_client: Client, broker: Vhost) -> None:
    # An answer about an order orders_service never stored: its handler fails, so it is retried.
    event = CreditReserved(uuid.uuid4(), uuid.uuid4(), 100)
    body = Envelope.wrap(event, source="users_service", cause=CAUSE).to_json()
    await publish_raw(broker, body, CreditReserved.TYPE)

    def retried(samples: Samples) -> bool:
        return value(samples, "events_retried_total", type=CreditReserved.TYPE) >= 1

    await eventually(until(orders_client, retried), what="the failed event sent to a retry queue")


async def test_outbox_lag_is_the_age_of_the_oldest_row_waiting_to_be_published(orders_client: Client) -> None:
    # A row whose publish failed, waiting for its next attempt in an hour, as a row the broker
    # returned would; it was written 42 seconds ago.
    await orders_client.app[DB_POOL].execute(
        """
        INSERT INTO outbox (event_id, event_type, body, created_at, attempts, retry_at)
        VALUES ($1, 'orders.order.created', 'not an event', now() - interval '42 seconds', 1,
                now() + interval '1 hour')
        """,
        uuid.uuid4(),
    )
    samples = await scrape(orders_client)
    assert value(samples, "outbox_unpublished_events") == 1
    assert 42 <= value(samples, "outbox_lag_seconds") < 60
    assert value(samples, "outbox_set_aside_events") == 0


async def test_a_row_that_can_never_be_published_is_set_aside_and_counted(orders_client: Client) -> None:
    await orders_client.app[DB_POOL].execute(
        "INSERT INTO outbox (event_id, event_type, body) VALUES ($1, 'orders.order.created', 'not an event')",
        uuid.uuid4(),
    )

    def set_aside(samples: Samples) -> bool:
        return (
            value(samples, "outbox_set_aside_events") == 1
            and value(samples, "outbox_unpublished_events") == 0
            and value(samples, "outbox_set_aside_total", type="orders.order.created") == 1
        )

    await eventually(until(orders_client, set_aside), what="the row set aside, and counted")
