"""orders_service's HTTP layer: turn validated requests into service calls and results into JSON.

The OpenAPI middleware has already checked the token, the query and the body against the contract.
"""

import datetime
import re
import uuid
from typing import Any

from aiohttp import web

from orders_service import saga, services
from orders_service.metrics import SAGA_METRICS
from shared.app_keys import DB_POOL, OUTBOX
from shared.auth import AUTHENTICATED_USER
from shared.http import cause_of, json_response
from shared.openapi import VALIDATED_BODY, VALIDATED_QUERY
from shared.problems import Problem, not_found, validation_problem

DEFAULT_PAGE_SIZE = 20
IDEMPOTENCY_KEY_TTL = web.AppKey("idempotency_key_ttl", datetime.timedelta)
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
# Printable ASCII (space to tilde), taken verbatim: a key is an opaque token of the client's.
_ACCEPTABLE_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")

routes = web.RouteTableDef()


def order_json(order: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": order["id"],
        "user_id": order["user_id"],
        "status": order["status"],
        "rejection_reason": order["rejection_reason"],
        "items": order["items"],
        "total_cents": order["total_cents"],
        "created_at": order["created_at"],
        "updated_at": order["updated_at"],
    }


def _order_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise not_found("order") from None


def _idempotency_key(request: web.Request) -> services.IdempotencyKey | None:
    """The request's Idempotency-Key, if it sent one. The contract documents the header, but the
    OpenAPI middleware checks only query parameters and bodies, so it is checked here."""
    values = request.headers.getall(IDEMPOTENCY_KEY_HEADER, [])
    if not values:
        return None
    pointer = f"#/headers/{IDEMPOTENCY_KEY_HEADER}"
    if len(values) > 1:
        raise validation_problem([{"pointer": pointer, "detail": "must be sent at most once"}])
    if not _ACCEPTABLE_IDEMPOTENCY_KEY.fullmatch(values[0]):
        raise validation_problem(
            [{"pointer": pointer, "detail": "must be 1 to 255 printable ASCII characters"}]
        )
    return services.IdempotencyKey(values[0], request.app[IDEMPOTENCY_KEY_TTL])


@routes.post("/api/orders")
async def place_order(request: web.Request) -> web.Response:
    idempotency_key = _idempotency_key(request)
    items = [services.Item(**item) for item in request[VALIDATED_BODY]["items"]]
    try:
        placed = await services.place_order(
            request.app[DB_POOL],
            request.app[OUTBOX],
            cause_of(request),
            user_id=request[AUTHENTICATED_USER],
            items=items,
            idempotency_key=idempotency_key,
        )
    except services.IdempotencyKeyReused:
        raise Problem(
            409,
            "This Idempotency-Key has already placed an order with another request body; "
            "use a new key for a new order.",
            type="urn:eda-reference:problem:idempotency-key-reused",
        ) from None
    order = placed.order
    headers = {"Location": f"/api/orders/{order['id']}"}
    if placed.replayed:
        # The first response again, as the idempotency-key draft has it: same status, same body.
        headers["Idempotent-Replayed"] = "true"
    # 202: the order is accepted, and its outcome (APPROVED or REJECTED) is decided asynchronously.
    return json_response(order_json(order), status=202, headers=headers)


@routes.get("/api/orders")
async def list_orders(request: web.Request) -> web.Response:
    query = request[VALIDATED_QUERY]
    try:
        page = await services.list_orders(
            request.app[DB_POOL],
            user_id=request[AUTHENTICATED_USER],
            status=query.get("status"),
            limit=query.get("limit", DEFAULT_PAGE_SIZE),
            cursor=query.get("cursor"),
        )
    except services.InvalidCursor:
        raise validation_problem(
            [{"pointer": "#/query/cursor", "detail": "is not a cursor this API issued"}]
        ) from None
    return json_response(
        {"items": [order_json(order) for order in page.orders], "next_cursor": page.next_cursor}
    )


@routes.get("/api/orders/{id}")
async def get_order(request: web.Request) -> web.Response:
    try:
        order = await services.get_order(
            request.app[DB_POOL], user_id=request[AUTHENTICATED_USER], order_id=_order_id(request)
        )
    except services.OrderNotFound:
        raise not_found("order") from None
    return json_response(order_json(order))


@routes.post("/api/orders/{id}/cancel")
async def cancel_order(request: web.Request) -> web.Response:
    try:
        order, changed = await services.cancel_order(
            request.app[DB_POOL],
            request.app[OUTBOX],
            request.app[SAGA_METRICS],
            cause_of(request),
            user_id=request[AUTHENTICATED_USER],
            order_id=_order_id(request),
        )
    except services.OrderNotFound:
        raise not_found("order") from None
    except saga.NotCancellable as error:
        raise Problem(
            409,
            f"The order is {error.status} and can no longer be cancelled.",
            type="urn:eda-reference:problem:order-not-cancellable",
        ) from None
    return json_response(order_json(order), status=202 if changed else 200)
