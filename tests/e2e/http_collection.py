"""A small reader and runner of `.http` request collections, in the subset of VS Code REST Client's
syntax that docs/walkthrough.http uses, so that a test can send every request of it in order.

The format, as read here:

- requests are separated by lines that start with `###` (the rest of such a line is a title);
- `@name = value` defines a file variable, wherever it stands: they are the file's, not a request's;
- a comment line starts with `#` or `//`; `# @name x` names the request, so that later ones can read
  its answer; `# expect: 422` states the status the request is meant to get (else any 2xx);
- the first other line is the request line, `METHOD URL` (an `HTTP/1.1` after it is allowed);
- header lines `Name: value` follow, up to the first blank line; the body is the rest, up to the next
  separator (blank lines at its end left out).

`{{...}}` is replaced, in the URL, the headers and the body, when the request is sent (as REST Client
does, so `{{$guid}}` is new on every use): by a file variable (itself substituted in turn), by the
system values `$guid` and `$timestamp`, or by a value of an earlier named request's JSON answer,
`{{name.response.body.$.field.field}}` or `{{name.response.body.$.items[0].field}}` (a tiny JSONPath:
fields and list indexes only). Anything else, an unknown variable included, is an error, not an empty
string, so that a typo in the collection fails its test.
"""

import dataclasses
import json
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

SEPARATOR = re.compile(r"^###")
VARIABLE = re.compile(r"^@(?P<name>[A-Za-z_][\w.-]*)\s*=\s*(?P<value>.*?)\s*$")
COMMENT = re.compile(r"^(#|//)")
NAME = re.compile(r"^(?:#|//)\s*@name\s+(?P<name>\S+)\s*$")
EXPECT = re.compile(r"^(?:#|//)\s*expect:\s*(?P<status>\d{3})\s*$")
REQUEST_LINE = re.compile(
    r"^(?P<method>GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(?P<url>\S+)(?:\s+HTTP/[\d.]+)?\s*$"
)
HEADER = re.compile(r"^(?P<name>[!#$%&'*+.^_`|~0-9A-Za-z-]+):\s*(?P<value>.*?)\s*$")
PLACEHOLDER = re.compile(r"\{\{\s*(?P<expression>.+?)\s*\}\}")
ANSWER = re.compile(r"^(?P<request>[A-Za-z_]\w*)\.response\.body\.(?P<path>\$.*)$")
JSON_PATH = re.compile(r"^\$(?P<steps>(?:\.[A-Za-z_][\w-]*|\[\d+\])*)$")
JSON_PATH_STEP = re.compile(r"\.(?P<field>[A-Za-z_][\w-]*)|\[(?P<index>\d+)\]")
NESTING_LIMIT = 10  # variables that name variables, at most this deep: deeper is taken for a cycle


class CollectionError(ValueError):
    """The collection is not of the format above, or names a value that is not there."""


@dataclasses.dataclass(frozen=True)
class HttpRequest:
    """A request as the file writes it: nothing substituted yet."""

    title: str  # the text after its `###`, if any
    line: int  # of its request line, 1-based, for messages
    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""
    name: str | None = None  # `# @name`
    expect: int | None = None  # `# expect:`; None: any 2xx
    comments: tuple[str, ...] = ()  # the other comment lines before it, without their `#`

    def describe(self) -> str:
        """How a message names it: its name, else its first comment, else its title."""
        return self.name or next(iter(self.comments), "") or self.title

    def accepts(self, status: int) -> bool:
        return status == self.expect if self.expect is not None else 200 <= status < 300


@dataclasses.dataclass(frozen=True)
class Collection:
    variables: dict[str, str]
    requests: list[HttpRequest]


@dataclasses.dataclass
class _Block:
    """A request being read: the lines from one separator to the next."""

    title: str
    name: str | None = None
    expect: int | None = None
    comments: list[str] = dataclasses.field(default_factory=list)
    request_line: tuple[int, str, str] | None = None  # line, method, URL
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: list[str] | None = None  # None until the blank line after the headers

    def request(self) -> HttpRequest | None:
        if self.request_line is None:
            return None  # variables or comments only, as the file's first part usually is
        line, method, url = self.request_line
        body = list(self.body or [])
        while body and not body[-1].strip():
            body.pop()
        return HttpRequest(
            self.title,
            line,
            method,
            url,
            tuple(self.headers),
            "\n".join(body),
            self.name,
            self.expect,
            tuple(self.comments),
        )

    def read(self, number: int, line: str, variables: dict[str, str]) -> None:
        """One more line of this request's part of the file."""
        if self.body is not None:
            self.body.append(line)
        elif self.request_line is not None:
            self.read_header(number, line)
        else:
            self.read_preamble(number, line, variables)

    def read_header(self, number: int, line: str) -> None:
        if not line.strip():
            self.body = []
        elif header := HEADER.match(line):
            self.headers.append((header["name"], header["value"]))
        else:
            raise CollectionError(f"line {number}: not a header (`Name: value`): {line!r}")

    def read_preamble(self, number: int, line: str, variables: dict[str, str]) -> None:
        """A line before the request line: blank, a variable, a comment, or the request line itself."""
        if not line.strip():
            return
        if variable := VARIABLE.match(line):
            variables[variable["name"]] = variable["value"]
        elif name := NAME.match(line):
            self.name = name["name"]
        elif expect := EXPECT.match(line):
            self.expect = int(expect["status"])
        elif COMMENT.match(line):
            self.comments.append(COMMENT.sub("", line).strip())
        elif request_line := REQUEST_LINE.match(line):
            self.request_line = (number, request_line["method"], request_line["url"])
        else:
            raise CollectionError(f"line {number}: not a request line (`METHOD URL`): {line!r}")


def parse(text: str) -> Collection:
    variables: dict[str, str] = {}
    blocks = [_Block(title="")]
    for number, line in enumerate(text.splitlines(), start=1):
        if SEPARATOR.match(line):
            blocks.append(_Block(title=SEPARATOR.sub("", line).strip()))
        else:
            blocks[-1].read(number, line, variables)
    requests = [request for block in blocks if (request := block.request()) is not None]
    names = [request.name for request in requests if request.name is not None]
    if duplicates := {name for name in names if names.count(name) > 1}:
        raise CollectionError(f"more than one request is named {sorted(duplicates)}")
    return Collection(variables, requests)


def json_path(document: Any, path: str) -> Any:
    """`$.field`, `$.field.field`, `$.items[0].field`, ... of `document`."""
    steps = JSON_PATH.match(path)
    if steps is None:
        raise CollectionError(f"{path!r}: only `$`, `.field` and `[index]` steps are understood")
    value = document
    for step in JSON_PATH_STEP.finditer(steps["steps"]):
        try:
            value = value[step["field"]] if step["field"] is not None else value[int(step["index"])]
        except (KeyError, IndexError, TypeError):
            raise CollectionError(f"{path!r}: no {step[0]!r} in {json.dumps(value)[:200]}") from None
    return value


@dataclasses.dataclass
class Substitution:
    """What `{{...}}` can name: the file's variables (overridden by `overrides`) and the JSON answers of
    the named requests sent so far."""

    variables: Mapping[str, str]
    answers: dict[str, Any] = dataclasses.field(default_factory=dict)  # request name -> its JSON body

    def __call__(self, text: str, depth: int = 0) -> str:
        if depth > NESTING_LIMIT:
            raise CollectionError(f"variables nested more than {NESTING_LIMIT} deep (a cycle?): {text!r}")
        return PLACEHOLDER.sub(lambda placeholder: self.value(placeholder["expression"], depth), text)

    def value(self, expression: str, depth: int) -> str:
        if expression == "$guid":
            return str(uuid.uuid4())
        if expression == "$timestamp":
            return str(int(time.time()))
        if answer := ANSWER.match(expression):
            if answer["request"] not in self.answers:
                raise CollectionError(f"{{{{{expression}}}}}: no JSON answer of a request named so, yet")
            found = json_path(self.answers[answer["request"]], answer["path"])
            # REST Client's rendering: a string as it is, anything else as JSON.
            return found if isinstance(found, str) else json.dumps(found)
        if expression in self.variables:
            return self(self.variables[expression], depth + 1)
        raise CollectionError(f"{{{{{expression}}}}}: no such variable")


@dataclasses.dataclass(frozen=True)
class Exchange:
    """A request as it was sent, and its answer."""

    request: HttpRequest
    url: str
    headers: dict[str, str]
    body: str
    status: int
    response_headers: CIMultiDictProxy[str]
    response_text: str

    def response_json(self) -> Any:
        return json.loads(self.response_text)


def is_json(content_type: str) -> bool:
    """application/json, and the structured syntax suffix +json (application/problem+json, ...)."""
    return content_type == "application/json" or content_type.endswith("+json")


async def run(
    collection: Collection, http: aiohttp.ClientSession, overrides: Mapping[str, str] | None = None
) -> list[Exchange]:
    """Send every request, in order, each with what the earlier ones answered; stop at the first whose
    status is not the one it states (any 2xx, unless it has `# expect:`). `overrides` replace file
    variables: a name the file does not define is a mistake (the file's value would be used instead)."""
    overrides = overrides or {}
    if unknown := overrides.keys() - collection.variables.keys():
        raise CollectionError(f"the collection defines no variable {sorted(unknown)}")
    substitute = Substitution({**collection.variables, **overrides})
    exchanges = []
    for request in collection.requests:
        url = substitute(request.url)
        headers = {name: substitute(value) for name, value in request.headers}
        body = substitute(request.body)
        async with http.request(request.method, url, headers=headers, data=body.encode() or None) as answer:
            text = await answer.text()
            exchange = Exchange(request, url, headers, body, answer.status, answer.headers, text)
            if request.name is not None and is_json(answer.content_type):
                substitute.answers[request.name] = json.loads(text)
        if not request.accepts(exchange.status):
            wanted = request.expect or "a 2xx"
            raise AssertionError(
                f"line {request.line} ({request.describe()}): "
                f"{request.method} {url} answered {exchange.status}, not {wanted}:\n{text}"
            )
        exchanges.append(exchange)
    return exchanges


def named(exchanges: Iterable[Exchange], name: str) -> Exchange:
    """The exchange of the request named `name`."""
    for exchange in exchanges:
        if exchange.request.name == name:
            return exchange
    raise KeyError(name)
