"""users_service's HTTP layer: turn validated requests into service calls and results into JSON.

The OpenAPI middleware has already checked the token, the query and the body against the contract.
"""

import uuid
from typing import Any

from aiohttp import web

from shared.app_keys import DB_POOL, OUTBOX
from shared.auth import AUTHENTICATED_USER
from shared.http import address_bucket, cause_of, forwarded_client, json_response
from shared.openapi import VALIDATED_BODY
from shared.problems import Problem, busy, not_found, unauthorized
from users_service import services
from users_service.passwords import HashingBusy, PasswordHasher
from users_service.tokens import TokenIssuer

PASSWORD_HASHER = web.AppKey("password_hasher", PasswordHasher)
TOKEN_ISSUER = web.AppKey("token_issuer", TokenIssuer)
LOGIN_THROTTLE = web.AppKey("login_throttle", services.LoginThrottle)
DEFAULT_CREDIT_LIMIT_CENTS = 100_000

routes = web.RouteTableDef()


def user_json(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": user["id"],
        "email": user["email"],
        "name": user["name"],
        "credit_limit_cents": user["credit_limit_cents"],
        "credit_used_cents": user["credit_used_cents"],
        "created_at": user["created_at"],
    }


@routes.post("/api/users")
async def register(request: web.Request) -> web.Response:
    body = request[VALIDATED_BODY]
    try:
        user = await services.register_user(
            request.app[DB_POOL],
            request.app[OUTBOX],
            request.app[PASSWORD_HASHER],
            cause_of(request),
            email=body["email"],
            name=body["name"],
            password=body["password"],
            credit_limit_cents=body.get("credit_limit_cents", DEFAULT_CREDIT_LIMIT_CENTS),
        )
    except services.EmailTaken:
        raise Problem(
            409, "A user with this email already exists.", type="urn:eda-reference:problem:email-taken"
        ) from None
    except HashingBusy as full:
        raise _hashing_busy(full) from None
    return json_response(user_json(user), status=201, headers={"Location": f"/api/users/{user['id']}"})


@routes.post("/api/auth/token")
async def token(request: web.Request) -> web.Response:
    body = request[VALIDATED_BODY]
    issuer = request.app[TOKEN_ISSUER]
    try:
        access_token = await services.sign_in(
            request.app[DB_POOL],
            request.app[PASSWORD_HASHER],
            issuer,
            request.app[LOGIN_THROTTLE],
            email=body["email"],
            password=body["password"],
            client=address_bucket(forwarded_client(request)),
        )
    except HashingBusy as full:
        raise _hashing_busy(full) from None
    except services.InvalidCredentials:
        # The same answer for an unknown email and a wrong password: no account enumeration.
        raise unauthorized("The email or password is incorrect.") from None
    except services.TooManySignIns as throttled:
        # Whatever the password, and for unknown emails alike: the answer reveals nothing more.
        seconds = throttled.retry_after_seconds
        raise Problem(
            429,
            f"Too many failed sign-ins for this email from here; try again in {seconds} seconds.",
            type="urn:eda-reference:problem:rate-limited",
            headers={"Retry-After": str(seconds)},
        ) from None
    return json_response(
        {"access_token": access_token, "token_type": "Bearer", "expires_in": issuer.ttl_seconds},
        headers={"Cache-Control": "no-store"},
    )


def _hashing_busy(full: HashingBusy) -> Problem:
    # Not 429: this client did nothing wrong; the service is at the memory it allows for hashes.
    return busy(
        "Too many passwords are being checked right now; try again shortly.",
        retry_after_seconds=full.retry_after_seconds,
    )


@routes.get("/api/users/me")
async def me(request: web.Request) -> web.Response:
    return await _user_response(request, request[AUTHENTICATED_USER])


@routes.get("/api/users/{id}")
async def user_by_id(request: web.Request) -> web.Response:
    try:
        wanted = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise not_found("user") from None
    if wanted != request[AUTHENTICATED_USER]:
        raise not_found("user")  # 404, not 403: another user's id must not reveal that it exists
    return await _user_response(request, wanted)


async def _user_response(request: web.Request, user_id: uuid.UUID) -> web.Response:
    user = await services.get_user(request.app[DB_POOL], user_id)
    if user is None:
        raise not_found("user")  # a valid token for a user that no longer exists
    return json_response(user_json(user))
