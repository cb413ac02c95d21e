"""Idempotency-Key on POST /api/v2/orders, against the real app and database.

OWASP API6:2023 (unrestricted access to sensitive business flows): a retried or doubled purchase
must not buy twice. A key places one order, however often and however concurrently it is sent; the
same key with another body is refused; keys are per user, so nobody reaches another user's order
through theirs (API1:2023); after the TTL a key is new again.
"""

import asyncio
import datetime
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from multidict import CIMultiDict

from devstack.waiting import eventually
from orders_service import services
from orders_service.config import OrdersConfig
from orders_service.routes import IDEMPOTENCY_KEY_TTL
from shared.app_keys import DB_POOL
from shared.auth import ADMIN
from shared.config import ConfigError
from tests.integration.conftest import Client
from users_service.tokens import TokenIssuer

TokenFor = Callable[[uuid.UUID], dict[str, str]]
BOOK: dict[str, Any] = {"sku": "BOOK-42", "quantity": 2}
BOOK_PRICE_CENTS = 1250  # the seeded catalogue's (orders_service/migrations/004_products.sql)
ORDER = {"items": [BOOK]}
OTHER_ORDER = {"items": [{**BOOK, "quantity": 3}]}


def keyed(auth: dict[str, str], key: str = "checkout-7f3a") -> dict[str, str]:
    return {**auth, "Idempotency-Key": key}


async def counts(client: Client) -> tuple[int, int, int]:
    """(orders, OrderCreated outbox rows, idempotency keys) in the database."""
    pool = client.app[DB_POOL]
    return (
        await pool.fetchval("SELECT count(*) FROM orders"),
        await pool.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'orders.order.created'"),
        await pool.fetchval("SELECT count(*) FROM idempotency_keys"),
    )


async def placed(client: Client, headers: dict[str, str], body: dict[str, Any] = ORDER) -> tuple[bytes, str]:
    """The raw 202 body and the Location of a placement."""
    response = await client.post("/api/v2/orders", json=body, headers=headers)
    assert response.status == 202, await response.text()
    return await response.read(), response.headers["Location"]


async def test_api6_the_same_idempotency_key_places_one_order(
    orders_client: Client, token_for: TokenFor
) -> None:
    headers = keyed(token_for(uuid.uuid4()))
    first = await orders_client.post("/api/v2/orders", json=ORDER, headers=headers)
    again = await orders_client.post("/api/v2/orders", json=ORDER, headers=headers)
    assert (first.status, again.status) == (202, 202)
    # The first response again, byte for byte, and marked as a replay.
    assert await again.read() == await first.read()
    assert again.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await counts(orders_client) == (1, 1, 1)


async def test_api6_the_replay_is_the_first_response_even_after_the_order_moved_on(
    orders_client: Client, token_for: TokenFor
) -> None:
    headers = keyed(token_for(uuid.uuid4()))
    first, location = await placed(orders_client, headers)
    order_id = uuid.UUID(location.rsplit("/", 1)[1])
    await orders_client.app[DB_POOL].execute(  # the saga's doing, done here directly
        "UPDATE orders SET status = 'APPROVED', updated_at = now() + interval '1 second' WHERE id = $1",
        order_id,
    )
    again, _ = await placed(orders_client, headers)
    assert again == first
    assert orjson.loads(again)["status"] == "PENDING"
    current = await orders_client.get(location, headers=headers)
    assert (await current.json())["status"] == "APPROVED"


async def test_api6_equal_bodies_match_however_they_are_spelled(
    orders_client: Client, token_for: TokenFor
) -> None:
    headers = {**keyed(token_for(uuid.uuid4())), "Content-Type": "application/json"}
    spellings = [
        b'{"items": [{"sku": "BOOK-42", "quantity": 2}]}',
        b'{"items":[{"quantity":2,"sku":"BOOK-42"}]}',
        b'{\n  "items": [ { "quantity": 2,\n "sku": "BOOK-42" } ]\n}',
    ]
    answers = [await orders_client.post("/api/v2/orders", data=body, headers=headers) for body in spellings]
    assert [answer.status for answer in answers] == [202, 202, 202]
    assert len({answer.headers["Location"] for answer in answers}) == 1
    assert await counts(orders_client) == (1, 1, 1)


async def test_api6_the_same_key_with_another_body_is_409_and_stores_nothing(
    orders_client: Client, token_for: TokenFor
) -> None:
    headers = keyed(token_for(uuid.uuid4()))
    first, _ = await placed(orders_client, headers)
    reused = await orders_client.post("/api/v2/orders", json=OTHER_ORDER, headers=headers)
    assert reused.status == 409
    assert reused.content_type == "application/problem+json"
    assert (await reused.json())["type"] == "urn:eda-reference:problem:idempotency-key-reused"
    assert await counts(orders_client) == (1, 1, 1)
    # The key still stands for the first order.
    assert (await placed(orders_client, headers))[0] == first


async def test_api6_a_replay_keeps_the_price_the_order_was_placed_at(
    orders_client: Client, token_for: TokenFor, issuer: TokenIssuer
) -> None:
    # The catalogue prices an order when it is placed; a retry after a price change gets that
    # order back, not a second one at the new price.
    headers = keyed(token_for(uuid.uuid4()))
    first, _ = await placed(orders_client, headers)
    admin = {"Authorization": f"Bearer {issuer.issue(uuid.uuid4(), [ADMIN])}"}
    book = {"name": "The Hitchhiker's Guide to the Galaxy, paperback", "active": True}
    repriced = await orders_client.put(
        "/api/v2/products/BOOK-42", json={**book, "price_cents": 2000}, headers=admin
    )
    assert repriced.status == 200, await repriced.text()
    again, _ = await placed(orders_client, headers)
    assert again == first
    assert orjson.loads(again)["total_cents"] == 2 * BOOK_PRICE_CENTS
    # Another key is another order, priced now.
    other, _ = await placed(orders_client, keyed(token_for(uuid.uuid4()), "after-the-change"))
    assert orjson.loads(other)["total_cents"] == 2 * 2000
    assert await counts(orders_client) == (2, 2, 2)


async def test_api1_keys_are_per_user_so_nobody_reaches_another_users_order_through_one(
    orders_client: Client, token_for: TokenFor
) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    alices, _ = await placed(orders_client, keyed(token_for(alice)))
    # Bob's same key, with the same body and then another one: his own orders, never 409 or Alice's.
    bobs, _ = await placed(orders_client, keyed(token_for(bob)))
    assert orjson.loads(bobs)["id"] != orjson.loads(alices)["id"]
    assert orjson.loads(bobs)["user_id"] == str(bob)
    other = await orders_client.post(
        "/api/v2/orders", json=OTHER_ORDER, headers=keyed(token_for(uuid.uuid4()))
    )
    assert other.status == 202
    assert await counts(orders_client) == (3, 3, 3)


async def test_an_expired_key_is_a_new_key(orders_client: Client, token_for: TokenFor) -> None:
    headers = keyed(token_for(uuid.uuid4()))
    pool, ttl = orders_client.app[DB_POOL], orders_client.app[IDEMPOTENCY_KEY_TTL]
    first, _ = await placed(orders_client, headers)
    await pool.execute("UPDATE idempotency_keys SET created_at = now() - $1::interval", ttl)
    # Expired, and not yet deleted: a new order, even with another body.
    second, _ = await placed(orders_client, headers, OTHER_ORDER)
    assert orjson.loads(second)["id"] != orjson.loads(first)["id"]
    assert await counts(orders_client) == (2, 2, 1)
    # From now on the key stands for the new order.
    assert (await placed(orders_client, headers, OTHER_ORDER))[0] == second
    assert (await orders_client.post("/api/v2/orders", json=ORDER, headers=headers)).status == 409


async def test_expired_keys_are_deleted_and_live_ones_kept(
    orders_client: Client, token_for: TokenFor
) -> None:
    pool, ttl = orders_client.app[DB_POOL], orders_client.app[IDEMPOTENCY_KEY_TTL]
    auth = token_for(uuid.uuid4())
    for key in ("old-1", "old-2", "live"):
        await placed(orders_client, keyed(auth, key))
    await pool.execute(
        "UPDATE idempotency_keys SET created_at = now() - $1::interval - interval '1 second' "
        "WHERE key LIKE 'old-%'",
        ttl,
    )
    assert await services.delete_expired_idempotency_keys(pool, ttl) == 2
    assert await pool.fetchval("SELECT array_agg(key) FROM idempotency_keys") == ["live"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 3  # the orders themselves stay


async def test_api6_concurrent_requests_with_one_key_place_one_order(
    orders_client: Client, token_for: TokenFor
) -> None:
    headers = keyed(token_for(uuid.uuid4()))
    answers = await asyncio.gather(
        *(orders_client.post("/api/v2/orders", json=ORDER, headers=headers) for _ in range(10))
    )
    assert [answer.status for answer in answers] == [202] * 10
    bodies = {await answer.read() for answer in answers}
    assert len(bodies) == 1
    assert sum("Idempotent-Replayed" not in answer.headers for answer in answers) == 1
    assert await counts(orders_client) == (1, 1, 1)


async def test_api6_concurrent_requests_with_one_key_and_two_bodies_place_one_order(
    orders_client: Client, token_for: TokenFor
) -> None:
    headers = keyed(token_for(uuid.uuid4()))
    answers = await asyncio.gather(
        *(
            orders_client.post("/api/v2/orders", json=body, headers=headers)
            for body in [ORDER, OTHER_ORDER] * 5
        )
    )
    # Whichever body claimed the key first placed the order; the other body's five are 409.
    assert sorted(answer.status for answer in answers) == [202] * 5 + [409] * 5
    assert await counts(orders_client) == (1, 1, 1)


@pytest.mark.parametrize("first_ends", ["commit", "rollback"])
async def test_a_retry_waits_for_the_request_in_flight_with_its_key(
    orders_client: Client, token_for: TokenFor, first_ends: str
) -> None:
    """A first request is held in flight: its key claimed, its transaction open (as another replica
    might be). The retry must wait for it, then replay it if it commits or place the order itself if
    it rolls back; it may neither place a second order nor fail on the unique key."""
    user_id, key = uuid.uuid4(), "in-flight"
    pool = orders_client.app[DB_POOL]
    held_id = uuid.uuid4()
    held_order: dict[str, Any] = {
        "id": str(held_id),
        "user_id": str(user_id),
        "status": "PENDING",
        "rejection_reason": None,
    }
    held_order |= {"items": [{**BOOK, "unit_price_cents": BOOK_PRICE_CENTS}], "total_cents": 2500}
    held_order |= {"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}
    async with pool.acquire() as first:
        transaction = first.transaction()
        await transaction.start()
        await first.execute(
            "INSERT INTO orders (id, user_id, status, total_cents) VALUES ($1, $2, 'PENDING', 2500)",
            held_id,
            user_id,
        )
        await first.execute(
            "INSERT INTO idempotency_keys (user_id, key, request_sha256, order_id, placed_order)"
            " VALUES ($1, $2, $3, $4, $5::jsonb)",
            user_id,
            key,
            services.request_fingerprint([services.Requested(**BOOK)]),
            held_id,
            orjson.dumps(held_order).decode(),
        )
        retry = asyncio.create_task(
            orders_client.post("/api/v2/orders", json=ORDER, headers=keyed(token_for(user_id), key))
        )

        async def retry_is_waiting_on_the_key() -> bool:
            waiting: int = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            return waiting == 1

        await eventually(retry_is_waiting_on_the_key, what="the retry waits for the first request")
        assert not retry.done()
        if first_ends == "commit":
            await transaction.commit()
        else:
            await transaction.rollback()
    answer = await retry
    assert answer.status == 202
    body = await answer.json()
    if first_ends == "commit":
        assert body == held_order
        assert answer.headers["Idempotent-Replayed"] == "true"
        assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    else:
        assert body["id"] != str(held_id)
        assert "Idempotent-Replayed" not in answer.headers
        assert await counts(orders_client) == (1, 1, 1)


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "tab\there", "caf\u00e9"],
    ids=["empty", "too-long", "tab", "non-ascii"],
)
async def test_an_invalid_key_is_422_and_places_nothing(
    orders_client: Client, token_for: TokenFor, key: str
) -> None:
    response = await orders_client.post(
        "/api/v2/orders", json=ORDER, headers=keyed(token_for(uuid.uuid4()), key)
    )
    assert response.status == 422, await response.text()
    assert (await response.json())["errors"] == [
        {"pointer": "#/headers/Idempotency-Key", "detail": "must be 1 to 255 printable ASCII characters"}
    ]
    assert await counts(orders_client) == (0, 0, 0)


@pytest.mark.parametrize("key", [b"bell\x07", b"del\x7f", b"nul\x00"], ids=["bell", "delete", "nul"])
async def test_a_key_with_control_characters_is_refused_and_places_nothing(
    orders_client: Client, token_for: TokenFor, key: bytes
) -> None:
    # aiohttp's client will not send these, so the request is written by hand.
    body = orjson.dumps(ORDER)
    auth = token_for(uuid.uuid4())["Authorization"]
    request = (
        b"POST /api/v2/orders HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nAuthorization: " + auth.encode() + b"\r\n"
        b"Idempotency-Key: " + key + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    server = orders_client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] in (b"400", b"422"), status_line  # 400: the HTTP parser refuses it first
    assert await counts(orders_client) == (0, 0, 0)


async def test_a_key_sent_twice_is_422(orders_client: Client, token_for: TokenFor) -> None:
    headers = CIMultiDict(token_for(uuid.uuid4()))
    headers.add("Idempotency-Key", "one")
    headers.add("Idempotency-Key", "two")
    response = await orders_client.post("/api/v2/orders", json=ORDER, headers=headers)
    assert response.status == 422
    assert (await response.json())["errors"][0]["detail"] == "must be sent at most once"
    assert await counts(orders_client) == (0, 0, 0)


async def test_the_longest_key_and_every_printable_character_are_accepted(
    orders_client: Client, token_for: TokenFor
) -> None:
    auth = token_for(uuid.uuid4())
    printable = "".join(map(chr, range(0x21, 0x7F))) + " inner space"
    for key in ("k" * 255, printable, "1"):
        await placed(orders_client, keyed(auth, key))
    assert await orders_client.app[DB_POOL].fetchval("SELECT count(*) FROM idempotency_keys") == 3
    assert (
        await orders_client.app[DB_POOL].fetchval(
            "SELECT count(*) FROM idempotency_keys WHERE key = $1", printable
        )
        == 1
    )


async def test_a_key_stays_valid_until_the_ttl_is_over(orders_client: Client, token_for: TokenFor) -> None:
    headers = keyed(token_for(uuid.uuid4()))
    ttl = orders_client.app[IDEMPOTENCY_KEY_TTL]
    first, _ = await placed(orders_client, headers)
    almost = ttl - datetime.timedelta(seconds=5)
    await orders_client.app[DB_POOL].execute(
        "UPDATE idempotency_keys SET created_at = now() - $1::interval", almost
    )
    assert (await placed(orders_client, headers))[0] == first
    assert await counts(orders_client) == (1, 1, 1)


@pytest.mark.parametrize("ttl", ["0", "-5"])
def test_a_ttl_that_would_forget_keys_at_once_is_refused(ttl: str) -> None:
    with pytest.raises(ConfigError, match="IDEMPOTENCY_KEY_TTL_SECONDS"):
        OrdersConfig.from_env({"IDEMPOTENCY_KEY_TTL_SECONDS": ttl})
