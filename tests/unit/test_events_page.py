"""/docs/events, the events' AsyncAPI contract as a page (gateway/events_page.py): it shows every
message and every field of every schema the document refers to, in the message's own article; it
escapes whatever the document says; it has no script; and the gateway serves it, and its stylesheet,
under the docs' Content-Security-Policy.
"""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pytest_aiohttp import AiohttpClient

from devstack.keys import KeyPair
from devstack.ports import free_port
from gateway.app import DOCS_CONTENT_SECURITY_POLICY, create_app
from gateway.config import GatewayConfig
from gateway.events_page import render_events_page
from shared.bus_contract import CONTRACT

DOCUMENT: dict[str, Any] = yaml.safe_load(CONTRACT.read_text())
MESSAGES: dict[str, Any] = DOCUMENT["components"]["messages"]


@pytest.fixture(scope="module")
def page() -> str:
    return render_events_page()


def file_references(node: Any) -> Iterator[str]:
    """Every $ref to another file in a part of the document."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str) and not node["$ref"].startswith("#"):
            yield node["$ref"]
        for value in node.values():
            yield from file_references(value)
    elif isinstance(node, list):
        for value in node:
            yield from file_references(value)


def field_names(schema: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property of a schema file, nested ones under their dotted names."""
    for name, sub in schema.get("properties", {}).items():
        yield f"{prefix}{name}", sub
        yield from field_names(sub, f"{prefix}{name}.")


def article(page: str, anchor: str) -> str:
    """The HTML of the article (or section) with that id, up to the next one."""
    match = re.search(rf'<(article|section) [^>]*id="{re.escape(anchor)}">(.*?)</\1>', page, re.DOTALL)
    assert match is not None, f"no #{anchor}"
    return match.group(2)


def row(html: str, field: str) -> str:
    match = re.search(rf'<tr[^>]*><td class="name"><code>{re.escape(field)}</code>.*?</tr>', html)
    assert match is not None, f"no row for {field}"
    return match.group(0)


def test_every_message_is_on_the_page_with_an_anchor(page: str) -> None:
    assert MESSAGES
    for key, message in MESSAGES.items():
        assert f'id="{message["name"]}"' in page, key  # /docs/events#orders.order.created
        assert f'id="{key}"' in page, key  # one (type, data version): /docs/events#orders.order.created.v1
        assert f'href="#{key}"' in page, key  # in the table of contents
        assert f"<code>{message['name']}</code>" in article(page, message["name"])


def test_every_field_of_every_schema_file_is_in_its_message(page: str) -> None:
    folder = CONTRACT.parent
    data_files = 0
    for key, message in MESSAGES.items():
        shown = article(page, key)
        for reference in set(file_references(message["payload"])):
            schema = json.loads((folder / reference).read_text())
            if reference.startswith("events/"):  # the data: under `data.`
                data_files += 1
                fields = [f"data.{name}" for name, _ in field_names(schema)]
                assert f"<code>{reference}</code>" in shown, key
            else:  # the envelope: in its own section, the message linking to it
                assert 'href="#envelope"' in shown, key
                fields = [name for name, _ in field_names(schema)]
                shown_there = article(page, "envelope")
                assert all(f"<code>{name}</code>" in shown_there for name in fields), reference
                continue
            for name in fields:
                assert f"<code>{name}</code>" in shown, (key, name)
    assert data_files == len(MESSAGES)  # each message's data has its schema file


def test_the_events_folder_holds_no_schema_the_page_leaves_out(page: str) -> None:
    referenced = {ref for message in MESSAGES.values() for ref in file_references(message["payload"])}
    on_disk = {f"events/{path.name}" for path in (CONTRACT.parent / "events").glob("*.json")}
    assert on_disk <= referenced
    assert all(f"<code>{reference}</code>" in page for reference in on_disk)


def test_a_field_s_required_flag_and_enum_are_shown(page: str) -> None:
    cancelled = row(article(page, "orders.order.cancelled.v1"), "data.previous_status")
    assert '<td class="required">required</td>' in cancelled
    assert "one of <code>PENDING</code>, <code>APPROVED</code>" in cancelled
    nested = row(article(page, "users.credit.rejected.v2"), "data.reason.code")
    assert 'class="depth-2"' in nested
    assert "<code>insufficient_credit</code>" in nested
    optional = row(article(page, "envelope"), "datacontenttype")
    assert '<td class="optional">optional</td>' in optional
    assert "format <code>uuid</code>" in row(article(page, "envelope"), "id")
    assert "≥ <code>0</code>" in row(article(page, "orders.order.created.v1"), "data.total_cents")


def test_each_operation_names_its_service_and_action(page: str) -> None:
    for key, operation in DOCUMENT["operations"].items():
        shown = article(page, f"channel-{operation['channel']['$ref'].rpartition('/')[2]}")
        [service] = [tag["name"] for tag in operation["tags"]]
        assert re.search(
            rf'id="operation-{key}"><h4><span class="action {operation["action"]}">'
            rf"{operation['action']}</span> <strong>{service}</strong>",
            shown,
        ), key
    # A message says who sends it and who receives it.
    created = article(page, "orders.order.created.v1")
    assert re.search(r"<dt>Sent by</dt><dd><strong>orders_service</strong>", created)
    assert "<strong>users_service</strong>" in created.partition("Received by")[2]


def test_a_data_version_no_longer_sent_is_marked(page: str) -> None:
    # orders_service sends orders.order.rejected version 2 only; version 1 is still received.
    assert "superseded: no longer sent" in article(page, "orders.order.rejected.v1")
    assert "badge" not in article(page, "orders.order.rejected.v2").partition("</h4>")[0]


def test_the_page_runs_no_script_and_loads_only_its_stylesheet(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"<[^>]*\son\w+=", page)  # no event handler attributes
    assert "style=" not in page
    assert "<style" not in page
    assert re.findall(r"<link [^>]*>", page) == ['<link rel="stylesheet" href="/docs/events.css">']
    assert 'href="/docs"' in page  # back to Swagger UI
    # Every link within the page has its target.
    ids = set(re.findall(r' id="([^"]+)"', page))
    assert set(re.findall(r'href="#([^"]+)"', page)) <= ids


HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"


def hostile_document(folder: Path) -> Path:
    """An AsyncAPI document of its own, with markup in every text and a few schema shapes."""
    (folder / "events").mkdir()
    (folder / "events" / "thing.done.v1.json").write_text(
        json.dumps(
            {
                "type": "object",
                "description": HOSTILE,
                "required": ["id", "parts"],
                "properties": {
                    "id": {"type": "string", "description": HOSTILE, "enum": [HOSTILE, "plain"]},
                    "parts": {"type": "array", "items": {"$ref": "#/$defs/part"}},
                    "owner": {"$ref": "#/$defs/person"},
                },
                "$defs": {
                    "part": {
                        "type": "object",
                        "required": ["sku"],
                        "properties": {"sku": {"type": "string"}},
                    },
                    "person": {
                        "type": "object",
                        "properties": {"name": {"type": "string"}, "manager": {"$ref": "#/$defs/person"}},
                    },
                },
            }
        )
    )
    (folder / "events" / "thing.done.v2.json").write_text(
        json.dumps({"type": "object", "properties": {"count": {"type": "integer", "maximum": 9}}})
    )
    message = {
        "name": "thing.done",
        "title": HOSTILE,
        "summary": HOSTILE,
        "contentType": "application/json",
        "payload": {"$ref": "events/thing.done.v1.json"},
    }
    document = {
        "asyncapi": "3.0.0",
        "info": {"title": f"Things {HOSTILE}", "version": "1.0", "description": f"Hello\n\n- {HOSTILE}"},
        "servers": {"bus": {"host": "bus:5672", "protocol": "amqp", "description": HOSTILE}},
        "channels": {
            "things": {
                "address": "things",
                "description": HOSTILE,
                "messages": {
                    "thing.done.v1": {"$ref": "#/components/messages/thing.done.v1"},
                    "thing.done.v2": {"$ref": "#/components/messages/thing.done.v2"},
                },
                "bindings": {"amqp": {"is": "routingKey", "exchange": {"name": HOSTILE}}},
            }
        },
        "operations": {
            "sendThings": {
                "action": "send",
                "x-service": "maker",
                "summary": HOSTILE,
                "channel": {"$ref": "#/channels/things"},
                "messages": [{"$ref": "#/channels/things/messages/thing.done.v1"}],
            },
            "watchThings": {
                "action": "receive",
                "tags": [{"name": "watcher"}],
                "channel": {"$ref": "#/channels/things"},
            },
        },
        "components": {
            "messages": {
                "thing.done.v1": {**message, "deprecated": True},
                "thing.done.v2": {**message, "payload": {"$ref": "events/thing.done.v2.json"}},
            }
        },
    }
    path = folder / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_everything_from_the_document_is_escaped(tmp_path: Path) -> None:
    page = render_events_page(hostile_document(tmp_path))
    assert "<script" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 8


def test_a_document_of_another_shape_is_rendered(tmp_path: Path) -> None:
    page = render_events_page(hostile_document(tmp_path))
    first, second = article(page, "thing.done.v1"), article(page, "thing.done.v2")
    # Operations without tags name their service by an x- field; one without messages has all.
    assert "<strong>maker</strong> (<a" in first.partition("Sent by")[2]
    assert "<strong>watcher</strong>" in second.partition("Received by")[2]
    assert '<span class="badge deprecated">deprecated</span>' in first
    assert "newer version, not sent yet" in second
    # Array items and nested objects under dotted names, a recursive schema shown once, not forever.
    assert '<td class="required">required</td>' in row(first, "parts[].sku")
    assert "recursive" in row(first, "owner.manager")
    assert "owner.manager.name" not in first
    assert "≤ <code>9</code>" in row(second, "count")
    assert "bus:5672" in page


@pytest.fixture
def gateway_config(key_pair: KeyPair) -> GatewayConfig:
    """A gateway with nothing behind it: the documentation needs no service, broker or database."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    return GatewayConfig(
        users_service_url=nowhere,
        orders_service_url=nowhere,
        jwt_public_key_file=str(key_pair.public),
        rate_limit_per_second=0,
        flow_enabled=False,
    )


async def test_the_gateway_serves_the_page_and_its_stylesheet(
    gateway_config: GatewayConfig, aiohttp_client: AiohttpClient, page: str
) -> None:
    client = await aiohttp_client(create_app(gateway_config))
    response = await client.get("/docs/events")
    assert response.status == 200
    assert response.content_type == "text/html"
    assert response.charset == "utf-8"
    assert response.headers["Content-Security-Policy"] == DOCS_CONTENT_SECURITY_POLICY
    assert await response.text() == page  # rendered once, at start
    stylesheet = await client.get("/docs/events.css")
    assert stylesheet.status == 200
    assert stylesheet.content_type == "text/css"
    assert stylesheet.headers["Content-Security-Policy"] == DOCS_CONTENT_SECURITY_POLICY
    assert "style-src 'self'" in DOCS_CONTENT_SECURITY_POLICY
    swagger = await client.get("/docs")
    assert 'href="/docs/events"' in await swagger.text()
