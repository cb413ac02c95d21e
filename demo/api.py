"""The calls of the public API that the demo makes, through the gateway.

Every request carries the X-Request-ID of its story (`demo-<run>-approved`, ...): the gateway passes
it on as the correlation id of every event the request leads to, so one id finds a whole story in
the logs and on the flow page.
"""

import dataclasses
from typing import Any

import aiohttp
import orjson

from demo.steps import StepFailed
from shared.http import REQUEST_ID_HEADER

FINAL_STATUSES = frozenset({"APPROVED", "REJECTED", "CANCELLED"})
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=10)


@dataclasses.dataclass
class User:
    name: str
    email: str
    password: str
    credit_limit_cents: int
    story: str  # the X-Request-ID of this user's requests
    id: str = ""
    token: str = ""


class Gateway:
    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")

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
        """The response's JSON body; any status but the expected one fails the step, with the problem
        the API answered."""
        headers = {REQUEST_ID_HEADER: story}
        if user is not None:
            headers["Authorization"] = f"Bearer {user.token}"
        async with self.session.request(
            method, self.base_url + path, json=body, headers=headers, timeout=REQUEST_TIMEOUT
        ) as response:
            raw = await response.read()
            if response.status != expect:
                raise StepFailed(f"{_status(response)}{_problem(raw)}, expected {expect}")
            answer: dict[str, Any] = orjson.loads(raw) if raw else {}
            return answer

    async def register(self, user: User) -> None:
        answer = await self.call(
            "POST",
            "/api/users",
            story=user.story,
            expect=201,
            body={
                "email": user.email,
                "name": user.name,
                "password": user.password,
                "credit_limit_cents": user.credit_limit_cents,
            },
        )
        user.id = answer["id"]

    async def sign_in(self, user: User) -> int:
        """Sign in; the token's lifetime in seconds."""
        answer = await self.call(
            "POST",
            "/api/auth/token",
            story=user.story,
            expect=200,
            body={"email": user.email, "password": user.password},
        )
        user.token = answer["access_token"]
        expires_in: int = answer["expires_in"]
        return expires_in

    async def me(self, user: User, *, story: str) -> dict[str, Any]:
        return await self.call("GET", "/api/users/me", story=story, expect=200, user=user)

    async def place_order(self, user: User, items: list[dict[str, Any]], *, story: str) -> dict[str, Any]:
        return await self.call(
            "POST", "/api/orders", story=story, expect=202, user=user, body={"items": items}
        )

    async def order(self, user: User, order_id: str, *, story: str) -> dict[str, Any]:
        return await self.call("GET", f"/api/orders/{order_id}", story=story, expect=200, user=user)

    async def cancel(self, user: User, order_id: str, *, story: str) -> dict[str, Any]:
        return await self.call("POST", f"/api/orders/{order_id}/cancel", story=story, expect=202, user=user)


def _status(response: aiohttp.ClientResponse) -> str:
    return f"{response.status} {response.reason or ''}".rstrip()


def _problem(raw: bytes) -> str:
    """The problem's title and detail (RFC 9457), or nothing when the body is none."""
    try:
        problem = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    if not isinstance(problem, dict):
        return ""
    said = [str(problem[key]) for key in ("title", "detail") if problem.get(key)]
    for error in problem.get("errors") or []:
        if isinstance(error, dict):
            said.append(f"{error.get('pointer', '')} {error.get('detail', '')}".strip())
    return f" ({'; '.join(said)})" if said else ""
