"""A client of version 1 of the public API, as one was written before version 2 existed: against the
contract as released (tests/e2e/version_1_contract.json) and nothing newer.

It knows no catalogue and no `/api/v2`. Version 1 asks for each item's price, so it sends the price
from its own records (PRICE_LIST), as such a client would have it. It reads every answer as that
contract describes it: a status the released operation does not document, or a body that its schema
does not admit, is an answer this client cannot read, and fails the test at once. It keeps every
answer's headers, so that a test can see what the gateway tells it besides (the deprecation).
"""

import dataclasses
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from jsonschema import Draft202012Validator
from multidict import CIMultiDictProxy
from referencing import Registry
from referencing.jsonschema import DRAFT202012

# The public contract as version 1 was released (before version 2), which version 1's clients
# were built from: kept here as such a client keeps it, since shared/contracts/released/ moves on.
RELEASED_CONTRACT = Path(__file__).parent / "version_1_contract.json"
_BASE = "urn:eda-reference:released-openapi"
# The client's own price list, written down when version 1 was current: the seeded catalogue's
# prices (orders_service/migrations/004_products.sql), which a version 1 client cannot ask for.
PRICE_LIST = {"BOOK-42": 1250, "BOOK-1984": 999, "MUG-01": 900, "TEA-01": 500}


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: CIMultiDictProxy[str]


class ReleasedContract:
    """The released public contract, as the client reads answers by it."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = json.loads(RELEASED_CONTRACT.read_text())
        self._registry: Registry[Any] = Registry().with_resource(
            _BASE, DRAFT202012.create_resource(self.document)
        )

    def operation(self, method: str, path: str) -> dict[str, Any]:
        operation: dict[str, Any] = self.document["paths"][path][method.lower()]
        return operation

    def errors(self, method: str, path: str, status: int, content_type: str, body: Any) -> list[str]:
        """Why the answer is not one the released operation describes (nothing: it is)."""
        pointer = f"/paths/{_escape(path)}/{method.lower()}/responses/{status}"
        if str(status) not in self.operation(method, path)["responses"]:
            return [f"{method} {path} answered {status}, which the released contract does not document"]
        response = self._at(pointer)
        while "$ref" in response:
            pointer = response["$ref"].removeprefix("#")
            response = self._at(pointer)
        if content_type not in response.get("content", {}):
            return [f"{method} {path} {status} answered {content_type}, which the released contract does not"]
        schema = {"$ref": f"{_BASE}#{pointer}/content/{_escape(content_type)}/schema"}
        validator = Draft202012Validator(schema, registry=self._registry)
        return [f"{method} {path} {status}: {error.message}" for error in validator.iter_errors(body)]

    def _at(self, pointer: str) -> dict[str, Any]:
        node: Any = self.document
        for part in pointer.strip("/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        assert isinstance(node, dict), pointer
        return node


def _escape(name: str) -> str:
    """A name as one step of a JSON pointer (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


class LegacyClient:
    """Version 1's operations, one method each, through a gateway at `url`."""

    def __init__(
        self, http: aiohttp.ClientSession, url: str, contract: ReleasedContract | None = None
    ) -> None:
        self.http = http
        self.url = url
        self.contract = contract or ReleasedContract()
        self.token: str | None = None
        self.answers: list[Answer] = []  # every answer it got, in order

    async def register(self, email: str, password: str, *, credit_limit_cents: int | None = None) -> Answer:
        body: dict[str, Any] = {"email": email, "name": "Legacy Client", "password": password}
        if credit_limit_cents is not None:  # version 1 let a client ask for a limit
            body["credit_limit_cents"] = credit_limit_cents
        return await self._call("POST", "/api/users", json=body)

    async def sign_in(self, email: str, password: str) -> Answer:
        answer = await self._call("POST", "/api/auth/token", json={"email": email, "password": password})
        if answer.status == 200:
            self.token = answer.body["access_token"]
        return answer

    async def me(self) -> Answer:
        return await self._call("GET", "/api/users/me")

    async def place_order(
        self,
        items: dict[str, int],
        *,
        prices: dict[str, int] = PRICE_LIST,
        idempotency_key: str | None = None,
    ) -> Answer:
        """Order `items` (sku -> quantity), each at its price in `prices`, as version 1 asks."""
        body = {
            "items": [
                {"sku": sku, "quantity": quantity, "unit_price_cents": prices[sku]}
                for sku, quantity in items.items()
            ]
        }
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return await self._call("POST", "/api/orders", json=body, headers=headers)

    async def order(self, order_id: str) -> Answer:
        return await self._call("GET", "/api/orders/{id}", order_id=order_id)

    async def orders(self, *, status: str | None = None, limit: int | None = None) -> Answer:
        query = {
            name: str(value) for name, value in (("status", status), ("limit", limit)) if value is not None
        }
        return await self._call("GET", "/api/orders", params=query)

    async def cancel(self, order_id: str) -> Answer:
        return await self._call("POST", "/api/orders/{id}/cancel", order_id=order_id)

    async def _call(
        self,
        method: str,
        template: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        order_id: str | None = None,
    ) -> Answer:
        path = template.replace("{id}", str(uuid.UUID(order_id))) if order_id is not None else template
        sent = dict(headers or {})
        if self.token is not None and self.contract.operation(method, template).get("security") != []:
            sent["Authorization"] = f"Bearer {self.token}"
        async with self.http.request(
            method, f"{self.url}{path}", json=json, params=params, headers=sent
        ) as response:
            body = await response.json(content_type=None)
            answer = Answer(response.status, body, response.headers)
            errors = self.contract.errors(method, template, response.status, response.content_type, body)
        assert not errors, "a version 1 client cannot read this answer:\n" + "\n".join(errors)
        self.answers.append(answer)
        return answer
