"""docs/walkthrough.http, the walkthrough as a collection for an editor's HTTP client: every request of
it, in order, against the running system, each answering as the file says, the admin's requests as a
user whom the operator's command (`python -m users_service.admin grant EMAIL`) made one. And the
reader and runner of such files (tests/e2e/http_collection.py), on a small example of their own."""

import uuid

import aiohttp
import pytest
from aiohttp import web

from devstack.processes import ROOT
from shared.api_versions import DEPRECATED
from tests.e2e.api import PASSWORD
from tests.e2e.conftest import Stack
from tests.e2e.http_collection import CollectionError, HttpRequest, Substitution, named, parse, run
from tests.support import run_python, serving

WALKTHROUGH = ROOT / "docs" / "walkthrough.http"
GRANT_DEADLINE = 60.0

EXAMPLE = """\
# A collection of two requests.
@host = http://example.test
@who = {{first}}-x

### Make one
@first = ada
# Look at the id.
# @name made
POST {{host}}/things HTTP/1.1
Content-Type: application/json
X-Who: {{who}}

{"who": "{{who}}",
 "n": 1}


###
# expect: 404
// @name missing
GET {{host}}/things/{{made.response.body.$.items[0].id}}
"""


def test_the_reader_finds_the_variables_and_each_request_with_its_name_and_expectation() -> None:
    collection = parse(EXAMPLE)

    assert collection.variables == {"host": "http://example.test", "who": "{{first}}-x", "first": "ada"}
    assert collection.requests == [
        HttpRequest(
            title="Make one",
            line=9,
            method="POST",
            url="{{host}}/things",
            headers=(("Content-Type", "application/json"), ("X-Who", "{{who}}")),
            body='{"who": "{{who}}",\n "n": 1}',
            name="made",
            comments=("Look at the id.",),
        ),
        HttpRequest(
            title="",
            line=20,
            method="GET",
            url="{{host}}/things/{{made.response.body.$.items[0].id}}",
            name="missing",
            expect=404,
        ),
    ]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("###\nGET\n", "line 2: not a request line"),
        ("###\nGET http://h/\nnot a header\n", "line 3: not a header"),
        (
            "###\n# @name a\nGET http://h/\n###\n# @name a\nGET http://h/\n",
            r"more than one request is named \['a'\]",
        ),
    ],
)
def test_the_reader_refuses_what_is_not_of_the_format(text: str, error: str) -> None:
    with pytest.raises(CollectionError, match=error):
        parse(text)


def test_substitution_reads_variables_system_values_and_earlier_answers() -> None:
    answer = {"items": [{"id": 7, "tag": "t"}], "ok": True}
    substitute = Substitution({"host": "http://h", "who": "{{first}}-x", "first": "ada"}, {"made": answer})

    assert substitute("{{host}}/{{ who }}") == "http://h/ada-x"
    assert substitute("{{made.response.body.$.items[0].id}}/{{made.response.body.$.items[0].tag}}") == "7/t"
    assert substitute("{{made.response.body.$.ok}}") == "true"  # anything but a string, as JSON
    assert substitute("{{made.response.body.$.items}}") == '[{"id": 7, "tag": "t"}]'
    assert uuid.UUID(substitute("{{$guid}}")) != uuid.UUID(substitute("{{$guid}}"))  # new on every use
    assert substitute("{{$timestamp}}").isdigit()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{{nope}}", "no such variable"),
        ("{{later.response.body.$.id}}", "no JSON answer of a request named so"),
        ("{{made.response.body.$.items[3].id}}", r"no '\[3\]'"),
        ("{{made.response.body.$..id}}", "only `\\$`, `.field` and `\\[index\\]` steps"),
        ("{{a}}", "a cycle"),
    ],
)
def test_substitution_refuses_what_is_not_there(text: str, error: str) -> None:
    substitute = Substitution({"a": "{{b}}", "b": "{{a}}"}, {"made": {"items": [{"id": 7}]}})
    with pytest.raises(CollectionError, match=error):
        substitute(text)


async def test_the_runner_sends_each_request_with_what_the_earlier_answers_said(
    http: aiohttp.ClientSession,
) -> None:
    received: list[tuple[str, str, str | None, str]] = []

    async def record(request: web.Request) -> web.Response:
        received.append((request.method, request.path, request.headers.get("X-Who"), await request.text()))
        if request.method == "POST":
            return web.json_response({"items": [{"id": 7}]}, status=201)
        return web.json_response({"status": 404}, status=404, content_type="application/problem+json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    async with serving(app) as url:
        exchanges = await run(parse(EXAMPLE), http, {"host": url})
        # The same collection, but the second request is held to a 2xx: the run stops there.
        with pytest.raises(
            AssertionError, match=r"line 19 \(missing\): GET .*/things/7 answered 404, not a 2xx"
        ):
            await run(parse(EXAMPLE.replace("# expect: 404\n", "")), http, {"host": url})
        with pytest.raises(CollectionError, match=r"defines no variable \['hots'\]"):
            await run(parse(EXAMPLE), http, {"hots": url})

    # The headers and the body as the file writes them, each {{...}} replaced, the id from the first answer.
    assert received == 2 * [
        ("POST", "/things", "ada-x", '{"who": "ada-x",\n "n": 1}'),
        ("GET", "/things/7", None, ""),
    ]
    assert [(exchange.status, exchange.url) for exchange in exchanges] == [
        (201, f"{url}/things"),
        (404, f"{url}/things/7"),
    ]


async def new_admin(stack: Stack, http: aiohttp.ClientSession) -> str:
    """A user made an admin as an operator makes one: registered through the API, then granted the
    role by `python -m users_service.admin grant EMAIL` with users_service's own database URL."""
    email = f"walkthrough-admin-{uuid.uuid4().hex[:10]}@example.com"
    body = {"email": email, "name": "Walkthrough Admin", "password": PASSWORD}
    async with http.post(f"{stack.url}/api/v2/users", json=body) as response:
        assert response.status == 201, await response.text()
    granted = await run_python(
        "-m",
        "users_service.admin",
        "grant",
        email,
        within=GRANT_DEADLINE,
        env={"DATABASE_URL": stack.env["users_service"]["DATABASE_URL"]},
    )
    assert granted.returncode == 0, granted.stderr
    assert f"granted admin: {email}" in granted.stdout
    return email


async def test_every_request_of_the_walkthrough_answers_as_the_file_says(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    collection = parse(WALKTHROUGH.read_text())
    admin_email = await new_admin(stack, http)

    exchanges = await run(
        collection, http, {"baseUrl": stack.url, "adminEmail": admin_email, "adminPassword": PASSWORD}
    )

    assert [exchange.request for exchange in exchanges] == collection.requests
    # What the file's comments promise, beyond the statuses.
    order, retry = named(exchanges, "order"), named(exchanges, "retry")
    assert (order.status, order.response_json()["total_cents"]) == (202, 2500)
    assert (retry.response_text, retry.response_headers.get("Idempotent-Replayed")) == (
        order.response_text,
        "true",
    )
    v1 = named(exchanges, "v1Me")
    assert {name: v1.response_headers.get(name) for name in DEPRECATED.headers()} == DEPRECATED.headers()
