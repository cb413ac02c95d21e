"""orders_service's HTTP layer: turn validated requests into service calls and results into JSON.

The OpenAPI middleware has already checked the token, its roles, the query and the body against the
contract. Each order operation is served at its version 1 path (`/api/...`, deprecated) and its
current one (`/api/v2/...`) by the same handler (shared/api_versions.py): the two versions differ
only in what their contracts let a body say. Version 2 names a sku and a quantity; version 1 also
sends a price, which the catalogue checks and never takes. The catalogue is version 2's only.
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
# The path parameter, checked here as the idempotency key is: the middleware checks queries and bodies.
_SKU = re.compile(r"[A-Za-z0-9_-]{1,64}")

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


def product_json(product: dict[str, Any]) -> dict[str, Any]:
    return {key: product[key] for key in ("sku", "name", "price_cents", "active")}


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
@routes.post("/api/v2/orders")
async def place_order(request: web.Request) -> web.Response:
    idempotency_key = _idempotency_key(request)
    requested = [services.Requested(**item) for item in request[VALIDATED_BODY]["items"]]
    try:
        placed = await services.place_order(
            request.app[DB_POOL],
            request.app[OUTBOX],
            cause_of(request),
            user_id=request[AUTHENTICATED_USER],
            requested=requested,
            idempotency_key=idempotency_key,
        )
    except services.UnacceptableItems as unacceptable:
        raise validation_problem(unacceptable.errors) from None
    except services.IdempotencyKeyReused:
        raise Problem(
            409,
            "This Idempotency-Key has already placed an order with another request body; "
            "use a new key for a new order.",
            type="urn:eda-reference:problem:idempotency-key-reused",
        ) from None
    order = placed.order
    # Under the path it was placed at: a Location points into the version it was asked in.
    headers = {"Location": f"{request.path}/{order['id']}"}
    if placed.replayed:
        # The first response again, as the idempotency-key draft has it: same status, same body.
        headers["Idempotent-Replayed"] = "true"
    # 202: the order is accepted, and its outcome (APPROVED or REJECTED) is decided asynchronously.
    return json_response(order_json(order), status=202, headers=headers)


@routes.get("/api/orders")
@routes.get("/api/v2/orders")
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
@routes.get("/api/v2/orders/{id}")
async def get_order(request: web.Request) -> web.Response:
    try:
        order = await services.get_order(
            request.app[DB_POOL], user_id=request[AUTHENTICATED_USER], order_id=_order_id(request)
        )
    except services.OrderNotFound:
        raise not_found("order") from None
    return json_response(order_json(order))


@routes.post("/api/orders/{id}/cancel")
@routes.post("/api/v2/orders/{id}/cancel")
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


@routes.get("/api/v2/products")
async def list_products(request: web.Request) -> web.Response:
    query = request[VALIDATED_QUERY]
    products, next_cursor = await services.list_products(
        request.app[DB_POOL], limit=query.get("limit", DEFAULT_PAGE_SIZE), cursor=query.get("cursor")
    )
    return json_response({"items": [product_json(p) for p in products], "next_cursor": next_cursor})


@routes.get("/api/v2/products/{sku}")
async def get_product(request: web.Request) -> web.Response:
    try:
        product = await services.get_product(request.app[DB_POOL], request.match_info["sku"])
    except services.ProductNotFound:
        raise Problem(404, "No product has that sku.") from None
    return json_response(product_json(product))


@routes.put("/api/v2/products/{sku}")
async def put_product(request: web.Request) -> web.Response:
    """Admins only (the contract's security requirement, enforced before this runs)."""
    sku = request.match_info["sku"]
    if not _SKU.fullmatch(sku):
        raise validation_problem([{"pointer": "#/path/sku", "detail": "must be 1 to 64 of A-Z a-z 0-9 _ -"}])
    body = request[VALIDATED_BODY]
    product, created = await services.put_product(
        request.app[DB_POOL],
        sku=sku,
        name=body["name"],
        price_cents=body["price_cents"],
        active=body["active"],
    )
    if created:
        return json_response(product_json(product), status=201, headers={"Location": request.path})
    return json_response(product_json(product))
