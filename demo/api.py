"""The calls of the public API that the demo makes, through the gateway: version 2, the current one,
except where the demo shows what a client of version 1 (deprecated) is told.

Every request carries the X-Request-ID of its story (`demo-<run>-approved`, ...): the gateway passes
it on as the correlation id of every event the request leads to, so one id finds a whole story in
the logs and on the flow page.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson

from demo.steps import StepFailed
from shared.api_versions import CURRENT_PREFIX
from shared.http import REQUEST_ID_HEADER

FINAL_STATUSES = frozenset({"APPROVED", "REJECTED", "CANCELLED"})
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)
# Version 1's prefix: its paths are version 2's without the version.
VERSION_1_PREFIX = "/api"
# What a deprecated operation answers with, each time (shared/api_versions.py).
DEPRECATION_HEADERS = ("Deprecation", "Sunset", "Link")
# The catalogue is read a page at a time; a shop bigger than this is not what the demo is about.
CATALOGUE_PAGE_SIZE = 100
MAX_CATALOGUE_PAGES = 10


@dataclasses.dataclass
class User:
    name: str
    email: str
    password: str
    story: str  # the X-Request-ID of this user's requests
    id: str = ""
    token: str = ""
    credit_limit_cents: int = 0  # as users_service answered at registration: the policy's


@dataclasses.dataclass(frozen=True)
class Answer:
    """A response of the expected status: its JSON body and its headers."""

    body: dict[str, Any]
    headers: Mapping[str, str]


class Gateway:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

    async def answer(
        self,
        method: str,
        path: str,
        *,
        story: str,
        expect: int,
        user: User | None = None,
        body: dict[str, Any] | None = None,
    ) -> Answer:
        """The response's JSON body and headers; any status but the expected one fails the step,
        with the problem the API answered."""
        headers = {REQUEST_ID_HEADER: story}
        if user is not None:
            headers["Authorization"] = f"Bearer {user.token}"
        async with self.session.request(
            method, self.base_url + path, json=body, headers=headers, timeout=REQUEST_TIMEOUT
        ) as response:
            raw = await response.read()
            if response.status != expect:
                raise StepFailed(
                    f"{status_line(response.status, response.reason)}{_problem(raw)}, expected {expect}"
                )
            parsed: dict[str, Any] = orjson.loads(raw) if raw else {}
            return Answer(parsed, response.headers.copy())

    async def call(
        self,
        method: str,
        path: str,
        *,
        story: str,
        expect: int,
        user: User | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The response's JSON body (see `answer`)."""
        answer = await self.answer(method, path, story=story, expect=expect, user=user, body=body)
        return answer.body

    async def catalogue(self, *, story: str) -> list[dict[str, Any]]:
        """Every product on sale, page after page: no token needed to look."""
        products: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_CATALOGUE_PAGES):
            query = f"?limit={CATALOGUE_PAGE_SIZE}" + (f"&cursor={cursor}" if cursor else "")
            page = await self.call("GET", f"{CURRENT_PREFIX}/products{query}", story=story, expect=200)
            products += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return products
        raise StepFailed(f"more than {MAX_CATALOGUE_PAGES * CATALOGUE_PAGE_SIZE} products on sale")

    async def register(self, user: User) -> None:
        """Register: no credit limit is asked for, or could be; the user gets the policy's."""
        answer = await self.call(
            "POST",
            f"{CURRENT_PREFIX}/users",
            story=user.story,
            expect=201,
            body={"email": user.email, "name": user.name, "password": user.password},
        )
        user.id = answer["id"]
        user.credit_limit_cents = answer["credit_limit_cents"]

    async def sign_in(self, user: User) -> int:
        """Sign in; the token's lifetime in seconds."""
        answer = await self.call(
            "POST",
            f"{CURRENT_PREFIX}/auth/token",
            story=user.story,
            expect=200,
            body={"email": user.email, "password": user.password},
        )
        user.token = answer["access_token"]
        expires_in: int = answer["expires_in"]
        return expires_in

    async def me(self, user: User, *, story: str) -> dict[str, Any]:
        return await self.call("GET", f"{CURRENT_PREFIX}/users/me", story=story, expect=200, user=user)

    async def place_order(self, user: User, items: list[dict[str, Any]], *, story: str) -> dict[str, Any]:
        """Items name a sku and a quantity; orders_service prices them from its catalogue."""
        return await self.call(
            "POST", f"{CURRENT_PREFIX}/orders", story=story, expect=202, user=user, body={"items": items}
        )

    async def order(self, user: User, order_id: str, *, story: str) -> dict[str, Any]:
        return await self.call(
            "GET", f"{CURRENT_PREFIX}/orders/{order_id}", story=story, expect=200, user=user
        )

    async def cancel(self, user: User, order_id: str, *, story: str) -> dict[str, Any]:
        return await self.call(
            "POST", f"{CURRENT_PREFIX}/orders/{order_id}/cancel", story=story, expect=202, user=user
        )

    async def set_credit_limit(
        self, user: User, user_id: str, credit_limit_cents: int, *, story: str, expect: int = 200
    ) -> dict[str, Any]:
        """As `user`, who must be an admin for the expected 200 (a 403 otherwise)."""
        return await self.call(
            "PUT",
            f"{CURRENT_PREFIX}/users/{user_id}/credit-limit",
            story=story,
            expect=expect,
            user=user,
            body={"credit_limit_cents": credit_limit_cents},
        )

    async def place_order_v1(
        self, user: User, items: list[dict[str, Any]], *, story: str, expect: int
    ) -> Answer:
        """Version 1's placement: each item also says the price the client expects."""
        return await self.answer(
            "POST", f"{VERSION_1_PREFIX}/orders", story=story, expect=expect, user=user, body={"items": items}
        )


def status_line(status: int, reason: str | None) -> str:
    return f"{status} {reason or ''}".rstrip()


def _problem(raw: bytes) -> str:
    """The problem's title and detail (RFC 9457), or nothing when the body is none."""
    problem = problem_of(raw)
    return f" ({problem})" if problem else ""


def problem_of(raw: bytes | dict[str, Any]) -> str:
    """What a problem (RFC 9457) says: its title, its detail and each field's error, or nothing."""
    if isinstance(raw, bytes):
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return ""
    else:
        parsed = raw
    if not isinstance(parsed, dict):
        return ""
    said = [str(parsed[key]) for key in ("title", "detail") if parsed.get(key)]
    for error in parsed.get("errors") or []:
        if isinstance(error, dict):
            said.append(f"{error.get('pointer', '')} {error.get('detail', '')}".strip())
    return "; ".join(said)
