"""The events' contract as a page, /docs/events: shared/contracts/asyncapi.yaml (AsyncAPI 3.0) and
the JSON Schemas its messages refer to, rendered once, when the gateway's app is made.

No well-kept Python renderer of AsyncAPI exists, and the AsyncAPI project's own is a large React
bundle; this one is small and server-side: one static HTML page with no script at all, styled by
gateway/static/events.css, so that it works offline under the docs' Content-Security-Policy. It reads
whatever the document holds (nothing here names an event, a channel or a service), and escapes every
text it takes from it.

The page, in order: the document's title, version and description; a table of contents; the servers;
one section per channel, with its bindings and its operations (who sends or receives what: the
operation's tags name the service); one section per message name, with one article per data version
(anchored as `#<name>` and `#<name>.v<N>`), whose payload is a table of fields, `$ref`s followed into
the schema files and nested objects under dotted names; and the envelope that payloads share (a file
a payload's `allOf` refers to: cloudevent.json), shown once.
"""

import dataclasses
import html
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from shared.bus_contract import CONTRACT

STYLESHEET = "/docs/events.css"
HOME = "/docs"
MAX_DEPTH = 6  # nested objects are shown this deep at most
# Keywords whose values are data, not schemas: a "$ref" in them is not followed.
LITERALS = frozenset({"const", "enum", "default", "examples", "example"})
VERSION_SUFFIX = re.compile(r"\.v(\d+)$")
JSON_SCHEMA_FORMAT = re.compile(r"application/(schema\+(json|yaml)|vnd\.aai\.asyncapi)")

Node = dict[str, Any]


# --- text -----------------------------------------------------------------------------------------


def escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def code(value: object) -> str:
    """A value from the document, as code: a string as it is, anything else as JSON."""
    return f"<code>{escape(value if isinstance(value, str) else json.dumps(value))}</code>"


def inline(text: object) -> str:
    """One paragraph of the document's Markdown, escaped, its `code spans` kept."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escape(" ".join(str(text).split())))


def prose(text: object) -> str:
    """A description: its paragraphs and "- " lists (the Markdown the document uses), escaped."""
    if not isinstance(text, str) or not text.strip():
        return ""
    blocks = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = [line.strip() for line in block.splitlines()]
        if not re.match(r"[-*] ", lines[0]):
            blocks.append(f"<p>{inline(' '.join(lines))}</p>")
            continue
        items: list[str] = []
        for line in lines:
            if re.match(r"[-*] ", line):
                items.append(line[2:])
            else:  # an item's continuation line
                items[-1] += " " + line
        blocks.append("<ul>" + "".join(f"<li>{inline(item)}</li>" for item in items) + "</ul>")
    return "".join(blocks)


# --- references -----------------------------------------------------------------------------------


class Unresolved(Exception):
    """A $ref that names nothing readable here: no such file or pointer, or a URL (never fetched)."""


class Documents:
    """The AsyncAPI document and the files its $refs reach, each read once. A reference is resolved
    relative to the file it is written in, and known by its target's "file#pointer"."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self._read: dict[Path, Any] = {}

    def load(self, path: Path) -> Any:
        if path not in self._read:
            text = path.read_text()
            self._read[path] = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        return self._read[path]

    def follow(self, ref: str, base: Path) -> tuple[Any, Path, str]:
        """What `ref`, written in the file `base`, names; the file it is in; its identity."""
        location, _, fragment = ref.partition("#")
        if urllib.parse.urlsplit(location).scheme:
            raise Unresolved(ref)
        path = (base.parent / urllib.parse.unquote(location)).resolve() if location else base
        try:
            node = self.load(path)
            for token in fragment.split("/")[1:] if fragment else []:
                token = urllib.parse.unquote(token).replace("~1", "/").replace("~0", "~")
                node = node[int(token)] if isinstance(node, list) else node[token]
        except (OSError, ValueError, LookupError, TypeError, yaml.YAMLError) as error:
            raise Unresolved(ref) from error
        return node, path, f"{path}#{fragment}"

    def resolve(self, node: Any, base: Path, identity: str = "") -> tuple[Any, Path, str]:
        """An AsyncAPI object with its Reference Objects followed to the end, the file it is in, and
        the identity of the last reference (`identity` if there was none)."""
        for _ in range(32):
            if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
                return node, base, identity
            node, base, identity = self.follow(node["$ref"], base)
        raise Unresolved(f"a chain of references too long, at {identity}")

    def get(self, node: Any, base: Path) -> Any:
        """An AsyncAPI object, references followed; None when they name nothing readable."""
        try:
            return self.resolve(node, base)[0]
        except Unresolved:
            return None

    def at(self, *tokens: str) -> tuple[Any, Path, str]:
        """The document's object at `tokens`, references followed."""
        escaped = (urllib.parse.quote(token.replace("~", "~0").replace("/", "~1")) for token in tokens)
        return self.resolve({"$ref": "#/" + "/".join(escaped)}, self.root)

    def schema(self, schema: Any, base: Path, seen: tuple[str, ...] = ()) -> Any:
        """A JSON Schema with each $ref replaced by what it names, the $ref's siblings over it. One
        that leads back into itself is left as {"x-recursive": ref}, one that names nothing readable
        as {"x-unresolved": ref}."""
        if isinstance(schema, list):
            return [self.schema(item, base, seen) for item in schema]
        if not isinstance(schema, dict):
            return schema
        own = {
            key: value if key in LITERALS else self.schema(value, base, seen)
            for key, value in schema.items()
            if key != "$ref"
        }
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return own
        try:
            target, target_base, identity = self.follow(ref, base)
        except Unresolved:
            return {**own, "x-unresolved": ref}
        if identity in seen:
            return {**own, "x-recursive": ref}
        resolved = self.schema(target, target_base, (*seen, identity))
        if not isinstance(resolved, dict):
            return own
        if target_base != base:  # another file: the table names it
            source = self.name(target_base)
            resolved = {**resolved, "x-source": source + (f"#{ref.partition('#')[2]}" if "#" in ref else "")}
        return {**resolved, **own}

    def name(self, path: Path) -> str:
        """A file's name relative to the document's folder."""
        folder = self.root.parent
        return str(path.relative_to(folder)) if path.is_relative_to(folder) else path.name


def merged(schema: Any) -> Node:
    """A schema with its allOf folded in: properties merged (a later part's keywords over an
    earlier's), required added up, any other keyword from the first part that has it."""
    if not isinstance(schema, dict):
        return {}
    result: Node = {}
    parts = [{key: value for key, value in schema.items() if key != "allOf"}]
    parts += [merged(part) for part in schema.get("allOf") or [] if isinstance(part, dict)]
    for part in parts:
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                properties = result.setdefault("properties", {})
                for name, sub in value.items():
                    properties[name] = {**properties.get(name, {}), **sub} if isinstance(sub, dict) else sub
            elif key == "required" and isinstance(value, list):
                result["required"] = list(dict.fromkeys([*result.get("required", []), *value]))
            else:
                result.setdefault(key, value)
    return result


# --- a schema as a table of fields ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    name: str  # dotted for a nested field: reason.code
    depth: int
    type: str
    required: bool
    constraints: tuple[str, ...]  # HTML
    description: str  # HTML
    deprecated: bool


def json_type(value: object) -> str:
    if value is None:
        return "null"
    kinds = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"), (list, "array"))
    return next((name for kind, name in kinds if isinstance(value, kind)), "object")


def type_of(schema: Node) -> str:
    declared = schema.get("type")
    if declared == "array" and isinstance(schema.get("items"), dict):
        return f"array of {type_of(merged(schema['items']))}"
    if isinstance(declared, list):
        return " | ".join(map(str, declared))
    if isinstance(declared, str):
        return declared
    variants = schema.get("oneOf") or schema.get("anyOf")
    if isinstance(variants, list):
        return " | ".join(dict.fromkeys(type_of(merged(variant)) for variant in variants))
    values = [schema["const"]] if "const" in schema else schema.get("enum") or []
    if values:
        return " | ".join(dict.fromkeys(map(json_type, values)))
    return "object" if "properties" in schema else "any"


# Keyword -> how its value reads in the constraints column.
BOUNDS = {
    "minimum": "≥",
    "exclusiveMinimum": ">",
    "maximum": "≤",
    "exclusiveMaximum": "<",
    "multipleOf": "multiple of",
    "minLength": "length ≥",
    "maxLength": "length ≤",
    "minItems": "items ≥",
    "maxItems": "items ≤",
    "minProperties": "fields ≥",
    "maxProperties": "fields ≤",
    "format": "format",
    "pattern": "pattern",
    "contentMediaType": "media type",
    "contentEncoding": "encoding",
    "default": "default",
}
FLAGS = {"uniqueItems": "unique items", "readOnly": "read-only", "writeOnly": "write-only"}


def constraints(schema: Node) -> tuple[str, ...]:
    found = [f"= {code(schema['const'])}"] if "const" in schema else []
    if isinstance(schema.get("enum"), list):
        found.append("one of " + ", ".join(code(value) for value in schema["enum"]))
    found += [f"{escape(label)} {code(schema[key])}" for key, label in BOUNDS.items() if key in schema]
    found += [label for key, label in FLAGS.items() if schema.get(key) is True]
    if schema.get("additionalProperties") is False:
        found.append("no other fields")
    if "x-source" in schema:
        found.append(f"schema {code(schema['x-source'])}")
    if "x-recursive" in schema:
        found.append(f"recursive: {code(schema['x-recursive'])}")
    if "x-unresolved" in schema:
        found.append(f"<strong>unresolved</strong> {code(schema['x-unresolved'])}")
    return tuple(found)


def fields(
    schema: Any, prefix: str = "", depth: int = 0, only: frozenset[str] | None = None
) -> Iterator[Field]:
    """A row per property, each followed by its own properties (an object's, its items', its
    variants') under its dotted name; `only` keeps just those names at the top."""
    schema = merged(schema)
    required = set(schema.get("required") or [])
    for name, sub in (schema.get("properties") or {}).items():
        if only is not None and name not in only:
            continue
        sub = merged(sub)
        description = sub.get("description") or sub.get("title") or ""
        yield Field(
            f"{prefix}{name}",
            depth,
            type_of(sub),
            name in required,
            constraints(sub),
            inline(description),
            sub.get("deprecated") is True,
        )
        if depth + 1 < MAX_DEPTH:
            for inner, inner_prefix in nested(sub, f"{prefix}{name}"):
                yield from fields(inner, inner_prefix, depth + 1)


def nested(schema: Node, name: str) -> Iterator[tuple[Any, str]]:
    """The schemas whose properties belong under a field, and the prefix of their names."""
    candidates = [
        (schema, f"{name}."),
        (schema.get("items"), f"{name}[]."),
        (schema.get("additionalProperties"), f"{name}.*."),
    ]
    candidates += [(variant, f"{name}.") for variant in schema.get("oneOf") or schema.get("anyOf") or []]
    for candidate, prefix in candidates:
        if "properties" in merged(candidate):
            yield candidate, prefix


def table(rows: list[Field]) -> str:
    if not rows:
        return '<p class="empty">No fields described.</p>'

    def row(field: Field) -> str:
        deprecated = ' <span class="badge deprecated">deprecated</span>' if field.deprecated else ""
        required = (
            '<td class="required">required</td>' if field.required else '<td class="optional">optional</td>'
        )
        return (
            f'<tr class="depth-{field.depth}">'
            f'<td class="name"><code>{escape(field.name)}</code>{deprecated}</td>'
            f'<td class="type">{escape(field.type)}</td>{required}'
            f'<td class="constraints">{"<br>".join(field.constraints)}</td><td>{field.description}</td></tr>'
        )

    return (
        '<table class="fields"><thead><tr><th>Field</th><th>Type</th><th>Required</th><th>Constraints</th>'
        f"<th>Description</th></tr></thead><tbody>{''.join(map(row, rows))}</tbody></table>"
    )


# --- the document, read ---------------------------------------------------------------------------


@dataclasses.dataclass
class Envelope:
    anchor: str
    schema: Node  # allOf folded, references followed
    source: str  # the file, relative to the document's folder

    @property
    def title(self) -> str:
        return str(self.schema.get("title") or self.source)


@dataclasses.dataclass
class Operation:
    key: str
    node: Node
    actor: str  # the service that sends or receives
    channel: str  # its channel's key
    messages: list["Message"]


@dataclasses.dataclass
class Message:
    key: str
    identity: str
    node: Node  # with its traits applied
    base: Path
    name: str
    anchor: str = ""
    version: int | str | None = None
    schema: Any = None  # the payload's, references followed
    schema_format: str | None = None
    envelopes: list[Envelope] = dataclasses.field(default_factory=list)
    own: frozenset[str] | None = None  # with envelopes: the fields the message sets or adds
    sent: list[Operation] = dataclasses.field(default_factory=list)
    received: list[Operation] = dataclasses.field(default_factory=list)


def actor(key: str, operation: Node, documents: Documents) -> str:
    """Who sends or receives: the operation's tags (as this document names services), else an x-
    field that names one, else the operation's title or key."""
    tags = [documents.get(tag, documents.root) for tag in operation.get("tags") or []]
    names = [str(tag["name"]) for tag in tags if isinstance(tag, dict) and "name" in tag]
    if names:
        return ", ".join(names)
    for extension in ("x-service", "x-sender", "x-receiver", "x-owner"):
        if isinstance(operation.get(extension), str):
            return str(operation[extension])
    return str(operation.get("title") or key)


def is_file_reference(part: object) -> bool:
    """A bare reference to another file: an envelope, when a payload's allOf holds one."""
    return isinstance(part, dict) and set(part) == {"$ref"} and not str(part["$ref"]).startswith("#")


class Page:
    """The document, read once: its channels, operations and messages (each known by the identity
    of what references reach, so that a message listed by several channels is one), and envelopes."""

    def __init__(self, path: Path) -> None:
        self.documents = Documents(path)
        self.document: Node = self.documents.load(self.documents.root)
        self.used_anchors = {"contents", "servers", "channels", "messages"}
        self.messages: dict[str, Message] = {}
        self.envelopes: dict[str, Envelope] = {}
        self.channels: dict[str, tuple[Node, str, list[Message]]] = {}  # key -> channel, identity, messages
        for key in self.section("components", "messages"):
            self.message(key, "components", "messages", key)
        for key in self.section("channels"):
            try:
                channel, _, identity = self.documents.at("channels", key)
            except Unresolved:
                channel, identity = {}, ""
            channel = channel if isinstance(channel, dict) else {}
            listed = [
                self.message(name, "channels", key, "messages", name)
                for name in channel.get("messages") or {}
            ]
            self.channels[key] = (channel, identity, [message for message in listed if message is not None])
        self.operations = [self.operation(key, node) for key, node in self.section("operations").items()]
        self.names: dict[str, list[Message]] = {}
        for message in self.messages.values():
            self.names.setdefault(message.name, []).append(message)
        self.name_anchors = {name: self.anchor(name) for name in self.names}
        for message in self.messages.values():
            versioned = f"{message.name}.v{message.version}" if message.version is not None else message.key
            message.anchor = self.anchor(versioned)

    def anchor(self, wanted: str) -> str:
        anchor, count = wanted, 1
        while anchor in self.used_anchors:
            count += 1
            anchor = f"{wanted}-{count}"
        self.used_anchors.add(anchor)
        return anchor

    def section(self, *keys: str) -> Node:
        node: Any = self.document
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def message(self, key: str, *tokens: str) -> Message | None:
        try:
            node, base, identity = self.documents.at(*tokens)
        except Unresolved:
            return None
        if identity not in self.messages and isinstance(node, dict):
            traits = [self.documents.get(trait, base) for trait in node.get("traits") or []]
            # A trait's fields apply where the message has none of its own.
            node = {k: v for trait in traits if isinstance(trait, dict) for k, v in trait.items()} | {
                k: v for k, v in node.items() if k != "traits"
            }
            name = str(node.get("name") or VERSION_SUFFIX.sub("", key))
            self.messages[identity] = message = Message(key, identity, node, base, name)
            self.read_payload(message)
        return self.messages.get(identity)

    def read_payload(self, message: Message) -> None:
        payload = message.node.get("payload")
        if isinstance(payload, dict) and "schema" in payload:  # a Multi Format Schema Object
            payload, message.schema_format = payload["schema"], payload.get("schemaFormat")
        if message.schema_format and not JSON_SCHEMA_FORMAT.match(str(message.schema_format)):
            message.schema = payload  # shown as it is
            return
        try:
            payload, base, _ = self.documents.resolve(payload, message.base)
        except Unresolved:
            payload, base = {"x-unresolved": str(payload)}, message.base
        message.schema = self.documents.schema(payload, base)
        parts = (payload.get("allOf") or []) if isinstance(payload, dict) else []
        envelopes = [self.envelope(part["$ref"], base) for part in parts if is_file_reference(part)]
        message.envelopes = [envelope for envelope in envelopes if envelope is not None]
        if message.envelopes:
            own = self.documents.schema([part for part in parts if not is_file_reference(part)], base)
            message.own = frozenset(merged({"allOf": own}).get("properties") or {})
        # The data version: the payload's `dataversion` constant, else the key's .v<N>.
        version = (merged(message.schema).get("properties") or {}).get("dataversion")
        if isinstance(version, dict) and isinstance(version.get("const"), int | str):
            message.version = version["const"]
        elif suffix := VERSION_SUFFIX.search(message.key):
            message.version = int(suffix.group(1))

    def envelope(self, ref: str, base: Path) -> Envelope | None:
        try:
            _, path, identity = self.documents.follow(ref, base)
        except Unresolved:
            return None
        if identity not in self.envelopes:
            source = self.documents.name(path)
            schema = merged(self.documents.schema({"$ref": ref}, base))
            self.envelopes[identity] = Envelope(self.anchor("envelope"), schema, source)
        return self.envelopes[identity]

    def operation(self, key: str, node: Node) -> Operation:
        try:
            channel_identity = self.documents.resolve(node.get("channel"), self.documents.root)[2]
        except Unresolved:
            channel_identity = ""
        channel = next(
            (k for k, (_, identity, _) in self.channels.items() if identity == channel_identity), ""
        )
        operation = Operation(key, node, actor(key, node, self.documents), channel, [])
        if "messages" in node:
            for reference in node.get("messages") or []:
                try:
                    identity = self.documents.resolve(reference, self.documents.root)[2]
                except Unresolved:
                    continue
                if identity in self.messages:
                    operation.messages.append(self.messages[identity])
        elif channel:  # none listed: every message of the channel
            operation.messages = list(self.channels[channel][2])
        for message in operation.messages:
            (message.sent if node.get("action") == "send" else message.received).append(operation)
        return operation


# --- the document, written ------------------------------------------------------------------------


def bindings(node: Node) -> str:
    """A node's protocol bindings: per protocol, a `key: value` chip per setting."""
    found = node.get("bindings")
    if not isinstance(found, dict) or not found:
        return ""

    def chips(value: Any, prefix: str) -> Iterator[str]:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key != "bindingVersion":
                    yield from chips(inner, f"{prefix}{key}.")
        else:
            shown = value if isinstance(value, str) else json.dumps(value)
            yield f"<code>{escape(prefix.rstrip('.'))}: {escape(shown)}</code>"

    protocols = "".join(
        f'<div><span class="protocol">{escape(protocol)}</span> {" ".join(chips(value, ""))}</div>'
        for protocol, value in found.items()
    )
    return f'<div class="bindings">{protocols}</div>'


def badges(message: Message, page: Page) -> str:
    """Deprecated (by the document; or an older data version that no operation sends any more, while
    a newer one is sent), an older version still sent, or a newer one that nobody sends yet."""
    found = []
    if message.node.get("deprecated") is True or (
        isinstance(message.schema, dict) and message.schema.get("deprecated") is True
    ):
        found.append(("deprecated", "deprecated"))
    if isinstance(message.version, int):
        others = {
            m.version: m for m in page.names[message.name] if m is not message and isinstance(m.version, int)
        }
        another_is_sent = any(m.sent for m in others.values())
        if any(version > message.version for version in others if isinstance(version, int)):
            if message.sent:
                found.append(("older", "older version, still sent"))
            elif another_is_sent:
                found.append(("deprecated", "superseded: no longer sent"))
        elif others and not message.sent and another_is_sent:
            found.append(("newer", "newer version, not sent yet"))
    return "".join(f' <span class="badge {kind}">{escape(text)}</span>' for kind, text in found)


def operation_link(operation: Operation, page: Page) -> str:
    channel = page.channels[operation.channel][0] if operation.channel in page.channels else {}
    title = channel.get("title") or operation.channel
    where = f'<a href="#channel-{escape(operation.channel)}">{inline(title)}</a>'
    return (
        f"<strong>{escape(operation.actor)}</strong> "
        f'(<a href="#operation-{escape(operation.key)}">{escape(operation.key)}</a>, on {where})'
    )


def message_list(messages: list[Message], page: Page) -> str:
    items = "".join(
        f'<li><a href="#{escape(m.anchor)}"><code>{escape(m.key)}</code></a>'
        f" {inline(m.node.get('title') or '')}{badges(m, page)}</li>"
        for m in messages
    )
    return f'<ul class="message-list">{items}</ul>'


def write_payload(message: Message) -> str:
    if message.schema_format and not JSON_SCHEMA_FORMAT.match(str(message.schema_format)):
        shown = escape(json.dumps(message.schema, indent=2))
        return f"<p>Format {code(message.schema_format)}:</p><pre>{shown}</pre>"
    if not message.envelopes:
        return table(list(fields(message.schema)))
    envelopes = ", ".join(f'<a href="#{escape(e.anchor)}">{inline(e.title)}</a>' for e in message.envelopes)
    rows = list(fields(message.schema, only=message.own))
    return f'<p class="envelope-note">The attributes of {envelopes}, with these:</p>{table(rows)}'


def write_message(message: Message, page: Page) -> str:
    node = message.node
    facts = []
    if message.version is not None:
        facts.append(("Data version", code(message.version)))
    if content_type := node.get("contentType") or page.document.get("defaultContentType"):
        facts.append(("Content type", code(content_type)))
    facts.append(("Sent by", "; ".join(operation_link(o, page) for o in message.sent) or "no operation"))
    facts.append(
        ("Received by", "; ".join(operation_link(o, page) for o in message.received) or "no operation")
    )
    correlation = page.documents.get(node.get("correlationId"), message.base)
    if isinstance(correlation, dict):
        location = code(correlation["location"]) + " " if "location" in correlation else ""
        facts.append(("Correlation id", location + inline(correlation.get("description") or "")))
    headers = node.get("headers")
    return (
        f'<article class="message" id="{escape(message.anchor)}">'
        f'<h4><a href="#{escape(message.anchor)}">{inline(node.get("title") or message.name)}</a>'
        f' <span class="key">{escape(message.key)}</span>{badges(message, page)}</h4>'
        + (f'<p class="summary">{inline(node["summary"])}</p>' if node.get("summary") else "")
        + prose(node.get("description"))
        + '<dl class="facts">'
        + "".join(f"<dt>{escape(name)}</dt><dd>{value}</dd>" for name, value in facts)
        + "</dl>"
        + bindings(node)
        + (
            f"<h5>Headers</h5>{table(list(fields(page.documents.schema(headers, message.base))))}"
            if headers
            else ""
        )
        + f"<h5>Payload</h5>{write_payload(message)}</article>"
    )


def write_operation(operation: Operation, page: Page) -> str:
    node = operation.node
    action = str(node.get("action") or "")
    verb = {"send": "sends", "receive": "receives"}.get(action, "")
    return (
        f'<div class="operation" id="operation-{escape(operation.key)}">'
        f'<h4><span class="action {escape(action)}">{escape(action)}</span> '
        f"<strong>{escape(operation.actor)}</strong> {verb}"
        f' <span class="key">{escape(operation.key)}</span></h4>'
        + (f'<p class="title">{inline(node["title"])}</p>' if node.get("title") else "")
        + (f"<p>{inline(node['summary'])}</p>" if node.get("summary") else "")
        + prose(node.get("description"))
        + bindings(node)
        + message_list(operation.messages, page)
        + "</div>"
    )


def write_channel(key: str, page: Page) -> str:
    channel, _, messages = page.channels[key]
    address = channel.get("address")
    facts = [("Address", code(address) if address is not None else "none: set at run time")]
    for name, parameter in (channel.get("parameters") or {}).items():
        facts.append(
            (
                f"Parameter {name}",
                inline(parameter.get("description") or "") if isinstance(parameter, dict) else "",
            )
        )
    operations = [operation for operation in page.operations if operation.channel == key]
    return (
        f'<section class="channel" id="channel-{escape(key)}">'
        f'<h3>{inline(channel.get("title") or key)} <span class="key">{escape(key)}</span></h3>'
        + '<dl class="facts">'
        + "".join(f"<dt>{escape(name)}</dt><dd>{value}</dd>" for name, value in facts)
        + "</dl>"
        + prose(channel.get("description"))
        + bindings(channel)
        + "".join(write_operation(operation, page) for operation in operations)
        + ("" if operations else message_list(messages, page))
        + "</section>"
    )


def write_servers(page: Page) -> str:
    servers = {name: server for name, server in page.section("servers").items() if isinstance(server, dict)}
    if not servers:
        return ""
    rows = "".join(
        f"<tr><td><strong>{escape(name)}</strong></td>"
        f"<td>{code(str(server.get('host', '')) + str(server.get('pathname', '')))}</td>"
        f"<td>{escape(server.get('protocol', ''))} {escape(server.get('protocolVersion', ''))}</td>"
        f"<td>{inline(server.get('description') or '')}</td></tr>"
        for name, server in servers.items()
    )
    return (
        '<section id="servers"><h2>Servers</h2><table class="servers"><thead><tr><th>Server</th><th>Host</th>'
        f"<th>Protocol</th><th>Description</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )


def write_contents(page: Page) -> str:
    servers = '<li><a href="#servers">Servers</a></li>' if page.section("servers") else ""
    channels = "".join(
        f'<li><a href="#channel-{escape(key)}">{inline(channel.get("title") or key)}</a></li>'
        for key, (channel, _, _) in page.channels.items()
    )
    names = "".join(
        f'<li><a href="#{escape(page.name_anchors[name])}"><code>{escape(name)}</code></a>'
        + "".join(
            f' <a class="version" href="#{escape(m.anchor)}">v{escape(m.version)}</a>'
            for m in versions
            if m.version is not None
        )
        + "</li>"
        for name, versions in page.names.items()
    )
    envelopes = "".join(
        f'<li><a href="#{escape(e.anchor)}">{inline(e.title)}</a></li>' for e in page.envelopes.values()
    )
    return (
        f'<nav class="contents" id="contents"><h2>Contents</h2><ol>{servers}'
        f'<li><a href="#channels">Channels and operations</a><ol>{channels}</ol></li>'
        f'<li><a href="#messages">Messages</a><ol class="names">{names}</ol></li>{envelopes}</ol></nav>'
    )


def write_envelope(envelope: Envelope) -> str:
    return (
        f'<section class="envelope" id="{escape(envelope.anchor)}">'
        f"<h2>{inline(envelope.title)}</h2>"
        f"<p>From {code(envelope.source)}: the attributes of every message whose payload refers to it "
        "(each message's own table shows what it sets or adds).</p>"
        + prose(envelope.schema.get("description"))
        + table(list(fields(envelope.schema)))
        + "</section>"
    )


def render_events_page(path: Path = CONTRACT) -> str:
    """The page of the AsyncAPI document at `path` (its references resolved beside it), as HTML."""
    page = Page(path)
    info = page.section("info")
    title, version = escape(info.get("title") or "Events"), escape(info.get("version") or "")
    default_type = page.document.get("defaultContentType")
    messages = "".join(
        f'<section class="message-name" id="{escape(page.name_anchors[name])}">'
        f"<h3><code>{escape(name)}</code></h3>"
        + "".join(write_message(message, page) for message in versions)
        + "</section>"
        for name, versions in page.names.items()
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{title} {version}</title><link rel="stylesheet" href="{STYLESHEET}"></head><body>'
        f'<header><p class="back"><a href="{HOME}">← The HTTP API ({HOME})</a></p>'
        f'<h1>{title} <span class="version">{version}</span></h1>'
        f'<p class="spec">AsyncAPI {escape(page.document.get("asyncapi") or "")}'
        + (f" · default content type {code(default_type)}" if default_type else "")
        + "</p>"
        + prose(info.get("description"))
        + "</header>"
        + write_contents(page)
        + "<main>"
        + write_servers(page)
        + '<section id="channels"><h2>Channels and operations</h2>'
        + "".join(write_channel(key, page) for key in page.channels)
        + f'</section><section id="messages"><h2>Messages</h2>{messages}</section>'
        + "".join(map(write_envelope, page.envelopes.values()))
        + f"</main><footer>Rendered from {code(path.name)} when the gateway started.</footer></body></html>\n"
    )
