"""users_service's HTTP layer: turn validated requests into service calls and results into JSON.

The OpenAPI middleware has already checked the token, its roles, the query and the body against the
contract. Each operation is served at its version 1 path (`/api/...`, deprecated) and its current one
(`/api/v2/...`) by the same handler where the two behave the same (shared/api_versions.py): version
2 no longer accepts a `credit_limit_cents` at registration, and version 1 ignores the one it sends.
"""

import uuid
from typing import Any

from aiohttp import web

from shared.app_keys import DB_POOL, OUTBOX
from shared.auth import ADMIN, AUTHENTICATED_ROLES, AUTHENTICATED_USER
from shared.http import address_bucket, cause_of, forwarded_client, json_response
from shared.openapi import VALIDATED_BODY
from shared.problems import Problem, busy, not_found, unauthorized, validation_problem
from users_service import services
from users_service.passwords import HashingBusy, PasswordHasher
from users_service.tokens import TokenIssuer

PASSWORD_HASHER = web.AppKey("password_hasher", PasswordHasher)
TOKEN_ISSUER = web.AppKey("token_issuer", TokenIssuer)
LOGIN_THROTTLE = web.AppKey("login_throttle", services.LoginThrottle)
NEW_USER_CREDIT_LIMIT_CENTS = web.AppKey("new_user_credit_limit_cents", int)

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
@routes.post("/api/v2/users")
async def register(request: web.Request) -> web.Response:
    """A new user gets the policy's credit limit. A version 1 client may still send a
    `credit_limit_cents`, which its contract accepts: it is ignored, as documented there."""
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
            credit_limit_cents=request.app[NEW_USER_CREDIT_LIMIT_CENTS],
        )
    except services.EmailTaken:
        raise Problem(
            409, "A user with this email already exists.", type="urn:eda-reference:problem:email-taken"
        ) from None
    except HashingBusy as full:
        raise _hashing_busy(full) from None
    return json_response(user_json(user), status=201, headers={"Location": f"{request.path}/{user['id']}"})


@routes.post("/api/auth/token")
@routes.post("/api/v2/auth/token")
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
@routes.get("/api/v2/users/me")
async def me(request: web.Request) -> web.Response:
    return await _user_response(request, request[AUTHENTICATED_USER])


@routes.get("/api/users/{id}")
@routes.get("/api/v2/users/{id}")
async def user_by_id(request: web.Request) -> web.Response:
    wanted = _user_id(request)
    if wanted != request[AUTHENTICATED_USER] and ADMIN not in request[AUTHENTICATED_ROLES]:
        raise not_found("user")  # 404, not 403: another user's id must not reveal that it exists
    return await _user_response(request, wanted)


@routes.put("/api/v2/users/{id}/credit-limit")
async def change_credit_limit(request: web.Request) -> web.Response:
    """Admins only: the contract's security requirement names the role, and the OpenAPI middleware
    has refused anyone else with 403 before this runs."""
    try:
        user = await services.change_credit_limit(
            request.app[DB_POOL],
            request.app[OUTBOX],
            cause_of(request),
            user_id=_user_id(request),
            credit_limit_cents=request[VALIDATED_BODY]["credit_limit_cents"],
        )
    except services.UserNotFound:
        raise not_found("user") from None
    except services.LimitBelowCreditInUse as error:
        raise validation_problem(
            [
                {
                    "pointer": "#/credit_limit_cents",
                    "detail": f"must be at least {error.credit_used_cents}, the credit the user's"
                    " approved orders hold",
                }
            ]
        ) from None
    return json_response(user_json(user))


def _user_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["id"])
    except ValueError:
        raise not_found("user") from None


async def _user_response(request: web.Request, user_id: uuid.UUID) -> web.Response:
    user = await services.get_user(request.app[DB_POOL], user_id)
    if user is None:
        raise not_found("user")  # a valid token for a user that no longer exists
    return json_response(user_json(user))
