"""RFC 9457 problem details: the one shape every error response of the system takes."""

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

PROBLEM_JSON = "application/problem+json"
# A service that has no room for one kind of work right now (and says when to try again): it is up
# and answering, so the gateway does not count this 503 against its circuit (gateway/proxy.py).
BUSY = "urn:eda-reference:problem:busy"


class Problem(Exception):
    """Raise it anywhere in a request; the problem middleware turns it into a response.

    `type` is a URI naming the kind of problem; "about:blank" means "just the HTTP status".
    `errors` carries field-level failures as RFC 9457 suggests: `{"pointer": ..., "detail": ...}`.
    """

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type: str = "about:blank",
        errors: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail or title or HTTPStatus(status).phrase)
        self.status = status
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail
        self.type = type
        self.errors = list(errors) if errors else None
        self.headers = dict(headers) if headers else {}
        self.extensions = dict(extensions) if extensions else {}

    def to_response(self, instance: str | None = None) -> web.Response:
        body: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status}
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extensions)
        return web.Response(
            status=self.status,
            body=orjson.dumps(body),
            content_type=PROBLEM_JSON,
            headers=self.headers,
        )


def validation_problem(errors: Sequence[Mapping[str, str]]) -> Problem:
    return Problem(
        422,
        "Some fields are invalid; each entry in errors names one.",
        title="Validation failed",
        type="urn:eda-reference:problem:validation",
        errors=errors,
    )


def unauthorized(detail: str) -> Problem:
    return Problem(
        401,
        detail,
        type="urn:eda-reference:problem:unauthorized",
        headers={"WWW-Authenticate": 'Bearer realm="eda-reference"'},
    )


def forbidden(role: str) -> Problem:
    """The caller is signed in, but the operation needs a role its token does not grant (OWASP
    API5). Said plainly: which operations need a role is public, in the contract."""
    return Problem(
        403,
        f"This operation needs the {role} role, which your access token does not grant.",
        type="urn:eda-reference:problem:forbidden",
    )


def not_found(what: str) -> Problem:
    return Problem(404, f"No {what} with that id is visible to you.")


def busy(detail: str, *, retry_after_seconds: int) -> Problem:
    return Problem(
        503,
        detail,
        title="Busy",
        type=BUSY,
        headers={"Retry-After": str(retry_after_seconds)},
    )
