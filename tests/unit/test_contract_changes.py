"""The breaking-change check of the contracts (devstack/contract_changes.py).

Each rule on small documents made here: the breaking change is reported, with the place it is at,
and a compatible change beside it is not. Then the real contracts: no breaking change since the
release snapshotted in shared/contracts/released/, and the motivating change caught on them."""

import copy
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devstack.contract_changes import (
    RELEASED,
    asyncapi_breaking_changes,
    breaking_changes,
    event_breaking_changes,
    main,
    openapi_breaking_changes,
)
from gateway.contract import public_contract

ROOT = Path(__file__).resolve().parents[2]
Doc = dict[str, Any]
Change = Callable[[Doc], None]

# OpenAPI ------------------------------------------------------------------------------------------


def _openapi() -> Doc:
    """A small released contract: one public POST with a body of referenced schemas, one GET."""
    return {
        "openapi": "3.1.0",
        "security": [{"bearerAuth": []}],
        "paths": {
            "/api/orders": {
                "post": {
                    "security": [],
                    "requestBody": {
                        "required": False,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/NewOrder"}}
                        },
                    },
                    "responses": {
                        "202": {"$ref": "#/components/responses/Accepted"},
                        "404": {"description": "no such user"},
                    },
                },
            },
            "/api/orders/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": 100}},
                        {"name": "X-Trace", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"$ref": "#/components/responses/Accepted"}},
                },
            },
        },
        "components": {
            "schemas": {
                "NewOrder": {
                    "type": "object",
                    "required": ["items"],
                    "properties": {
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/NewItem"}},
                        "meta": {"type": "object", "additionalProperties": {"type": ["string", "integer"]}},
                        "version": {"const": 1},
                        "payment": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                    },
                },
                "NewItem": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["sku"],
                    "properties": {
                        "sku": {"type": "string", "maxLength": 64, "pattern": "^[A-Z0-9-]+$"},
                        "quantity": {"type": "integer", "minimum": 1},
                        "note": {"type": ["string", "null"], "description": "free text"},
                        "kind": {"enum": ["book", "game"]},
                    },
                },
                "Order": {
                    "type": "object",
                    "required": ["id", "status"],
                    "properties": {
                        "id": {"type": "string"},
                        "status": {"enum": ["PENDING", "APPROVED"]},
                        "total_cents": {"type": "integer", "minimum": 0},
                        "note": {"type": "string", "maxLength": 100},
                    },
                },
            },
            "responses": {
                "Accepted": {
                    "description": "the order",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Order"}}},
                }
            },
        },
    }


def _schema(document: Doc, name: str) -> Doc:
    schema: Doc = document["components"]["schemas"][name]
    return schema


def _breaking(change: Change) -> list[str]:
    released = _openapi()
    current = copy.deepcopy(released)
    change(current)
    return openapi_breaking_changes(released, current)


POST, GET = "POST /api/orders", "GET /api/orders/{id}"
BODY, RESPONSE = f"{POST}: request body", f"{GET}: response 200 application/json"


def _remove_note(document: Doc) -> None:
    del _schema(document, "NewItem")["properties"]["note"]


def _remove_note_from_open_schema(document: Doc) -> None:
    _remove_note(document)
    del _schema(document, "NewItem")["additionalProperties"]


BREAKING_REQUESTS: dict[str, tuple[Change, str]] = {
    "property removed (closed)": (
        _remove_note,
        f"{BODY}: items/items/note: removed (a client that sends it is refused)",
    ),
    "property removed (open)": (
        _remove_note_from_open_schema,
        f"{BODY}: items/items/note: removed (the server ignores it where a client sends it)",
    ),
    "property newly required": (
        lambda d: _schema(d, "NewItem")["required"].append("quantity"),
        f"{BODY}: items/items/quantity: newly required (a client that leaves it out is refused)",
    ),
    "type narrowed": (
        lambda d: _schema(d, "NewItem")["properties"]["note"].update(type="string"),
        f'{BODY}: items/items/note: type narrowed: ["string", "null"] -> "string"',
    ),
    "enum value removed": (
        lambda d: _schema(d, "NewItem")["properties"]["kind"].update(enum=["book"]),
        f'{BODY}: items/items/kind: enum values removed: ["game"]',
    ),
    "minimum raised": (
        lambda d: _schema(d, "NewItem")["properties"]["quantity"].update(minimum=2),
        f"{BODY}: items/items/quantity: minimum tightened: 1 -> 2",
    ),
    "maxLength lowered": (
        lambda d: _schema(d, "NewItem")["properties"]["sku"].update(maxLength=32),
        f"{BODY}: items/items/sku: maxLength tightened: 64 -> 32",
    ),
    "maxItems added": (
        lambda d: _schema(d, "NewOrder")["properties"]["items"].update(maxItems=10),
        f"{BODY}: items: maxItems tightened: none -> 10",
    ),
    "pattern changed": (
        lambda d: _schema(d, "NewItem")["properties"]["sku"].update(pattern="^[A-Z]+$"),
        f'{BODY}: items/items/sku: pattern changed: "^[A-Z0-9-]+$" -> "^[A-Z]+$"',
    ),
    "additionalProperties turned false": (
        lambda d: _schema(d, "NewOrder").update(additionalProperties=False),
        f"{BODY}: additionalProperties turned false (other properties are refused)",
    ),
    "additionalProperties schema narrowed": (
        lambda d: _schema(d, "NewOrder")["properties"]["meta"]["additionalProperties"].update(type="string"),
        f'{BODY}: meta/additionalProperties: type narrowed: ["string", "integer"] -> "string"',
    ),
    "const changed": (
        lambda d: _schema(d, "NewOrder")["properties"]["version"].update(const=2),
        f"{BODY}: version: const changed: 1 -> 2",
    ),
    "oneOf part narrowed": (
        lambda d: _schema(d, "NewOrder")["properties"]["payment"]["oneOf"][1].update(maximum=5),
        f"{BODY}: payment/oneOf/1: maximum tightened: none -> 5",
    ),
    "oneOf part removed": (
        lambda d: _schema(d, "NewOrder")["properties"]["payment"]["oneOf"].pop(),
        f"{BODY}: payment: oneOf changed: 2 schemas -> 1",
    ),
    "body became required": (
        lambda d: d["paths"]["/api/orders"]["post"]["requestBody"].update(required=True),
        f"{BODY}: now required (a client that sends none is refused)",
    ),
    "media type removed": (
        lambda d: d["paths"]["/api/orders"]["post"]["requestBody"].update(content={"text/plain": {}}),
        f"{BODY}: application/json no longer accepted",
    ),
}


@pytest.mark.parametrize(("change", "expected"), BREAKING_REQUESTS.values(), ids=BREAKING_REQUESTS.keys())
def test_a_request_that_refuses_what_it_accepted_is_breaking(change: Change, expected: str) -> None:
    assert _breaking(change) == [expected]


BREAKING_RESPONSES: dict[str, tuple[Change, str]] = {
    "property removed": (
        lambda d: _schema(d, "Order")["properties"].pop("total_cents"),
        "total_cents: removed (a client that reads it finds nothing)",
    ),
    "property no longer required": (
        lambda d: _schema(d, "Order")["required"].remove("id"),
        "id: no longer required (a client that relies on it may not get it)",
    ),
    "type widened": (
        lambda d: _schema(d, "Order")["properties"]["note"].update(type=["string", "null"]),
        'note: type widened: "string" -> ["string", "null"]',
    ),
    "enum value added": (
        lambda d: _schema(d, "Order")["properties"]["status"]["enum"].append("ARCHIVED"),
        'status: enum values added: ["ARCHIVED"]',
    ),
    "minimum removed": (
        lambda d: _schema(d, "Order")["properties"]["total_cents"].pop("minimum"),
        "total_cents: minimum loosened: 0 -> none",
    ),
    "maxLength raised": (
        lambda d: _schema(d, "Order")["properties"]["note"].update(maxLength=200),
        "note: maxLength loosened: 100 -> 200",
    ),
}


@pytest.mark.parametrize(("change", "expected"), BREAKING_RESPONSES.values(), ids=BREAKING_RESPONSES.keys())
def test_a_response_that_sends_what_clients_did_not_expect_is_breaking(change: Change, expected: str) -> None:
    # Order is both operations' response: each reports it.
    assert _breaking(change) == [
        f"{POST}: response 202 application/json: {expected}",
        f"{RESPONSE}: {expected}",
    ]


def _get(document: Doc) -> Doc:
    operation: Doc = document["paths"]["/api/orders/{id}"]["get"]
    return operation


def _post(document: Doc) -> Doc:
    operation: Doc = document["paths"]["/api/orders"]["post"]
    return operation


def _add_order_path(document: Doc) -> None:
    document["paths"]["/api/orders"]["put"] = {"responses": {"200": {"description": "new"}}}


def _remove_response_media_type(document: Doc) -> None:
    _get(document)["responses"]["200"] = {"description": "the order", "content": {"text/csv": {}}}


BREAKING_OPERATIONS: dict[str, tuple[Change, str]] = {
    "operation removed": (
        lambda d: d["paths"]["/api/orders/{id}"].pop("get"),
        f"{GET}: removed (a client that calls it gets 404 or 405)",
    ),
    "path removed": (
        lambda d: d["paths"].pop("/api/orders"),
        f"{POST}: removed (a client that calls it gets 404 or 405)",
    ),
    "success status removed": (
        lambda d: _post(d)["responses"].pop("202"),
        f"{POST}: response 202: removed (a client that waits for it never gets it)",
    ),
    "response media type removed": (
        _remove_response_media_type,
        f"{GET}: response 200 application/json: no longer sent",
    ),
    "required parameter added": (
        lambda d: _get(d)["parameters"].append({"name": "fields", "in": "query", "required": True}),
        f"{GET}: query parameter fields: newly required (a client without it is refused)",
    ),
    "parameter became required": (
        lambda d: _get(d)["parameters"][0].update(required=True),
        f"{GET}: query parameter limit: newly required (a client without it is refused)",
    ),
    "parameter removed": (
        lambda d: _get(d)["parameters"].pop(0),
        f"{GET}: query parameter limit: removed (a client that sends it is refused or ignored)",
    ),
    "path parameter narrowed": (
        lambda d: d["paths"]["/api/orders/{id}"]["parameters"][0]["schema"].update(format="uuid"),
        f'{GET}: path parameter id: format changed: none -> "uuid"',
    ),
    "parameter narrowed": (
        lambda d: _get(d)["parameters"][0]["schema"].update(maximum=50),
        f"{GET}: query parameter limit: maximum tightened: 100 -> 50",
    ),
    "authentication now needed": (
        lambda d: _post(d).pop("security"),  # the document's own: bearerAuth
        f"{POST}: security: now needs authentication (a client without credentials is refused)",
    ),
}


@pytest.mark.parametrize(("change", "expected"), BREAKING_OPERATIONS.values(), ids=BREAKING_OPERATIONS.keys())
def test_an_operation_that_lost_what_clients_rely_on_is_breaking(change: Change, expected: str) -> None:
    assert _breaking(change) == [expected]


COMPATIBLE: dict[str, Change] = {
    "new optional request property": lambda d: _schema(d, "NewItem")["properties"].update(
        gift={"type": "boolean"}
    ),
    "new response property": lambda d: _schema(d, "Order")["properties"].update(placed_at={"type": "string"}),
    "request property no longer required": lambda d: _schema(d, "NewItem")["required"].clear(),
    "request type widened": lambda d: _schema(d, "NewItem")["properties"]["sku"].update(
        type=["string", "null"]
    ),
    "request limit loosened": lambda d: _schema(d, "NewItem")["properties"]["sku"].pop("maxLength"),
    "request pattern dropped": lambda d: _schema(d, "NewItem")["properties"]["sku"].pop("pattern"),
    "request enum value added": lambda d: _schema(d, "NewItem")["properties"]["kind"]["enum"].append("film"),
    "response property newly required": lambda d: _schema(d, "Order")["required"].append("note"),
    "response enum value removed": lambda d: _schema(d, "Order")["properties"]["status"]["enum"].pop(),
    "response limit tightened": lambda d: _schema(d, "Order")["properties"]["note"].update(maxLength=10),
    "description changed": lambda d: _schema(d, "NewItem")["properties"]["note"].update(description="other"),
    "deprecated": lambda d: _post(d).update(deprecated=True, summary="use /api/v2/orders"),
    "new operation": _add_order_path,
    "new path": lambda d: d["paths"].update({"/api/v2/orders": {"post": {"responses": {}}}}),
    "new optional parameter": lambda d: _get(d)["parameters"].append({"name": "cursor", "in": "query"}),
    "header name's case": lambda d: _get(d)["parameters"][1].update(name="x-trace"),
    "new response status": lambda d: _post(d)["responses"].update({"409": {"description": "conflict"}}),
    "error response removed": lambda d: _post(d)["responses"].pop("404"),
    "authentication no longer needed": lambda d: _get(d).update(security=[]),
    "inline instead of a reference": lambda d: _post(d)["requestBody"]["content"]["application/json"].update(
        schema=copy.deepcopy(_schema(d, "NewOrder"))
    ),
}


@pytest.mark.parametrize("change", COMPATIBLE.values(), ids=COMPATIBLE.keys())
def test_a_compatible_change_is_not_reported(change: Change) -> None:
    assert _breaking(change) == []


def test_a_recursive_schema_is_compared_once_and_the_comparison_ends() -> None:
    released = _openapi()
    released["components"]["schemas"]["NewItem"]["properties"]["parts"] = {
        "type": "array",
        "items": {"$ref": "#/components/schemas/NewItem"},
    }
    current = copy.deepcopy(released)
    _remove_note(current)
    assert openapi_breaking_changes(released, current) == [
        f"{BODY}: items/items/note: removed (a client that sends it is refused)"
    ]  # not again at items/items/parts/items/note, nor further down


def test_a_reference_cycle_is_refused_not_followed_forever() -> None:
    released = _openapi()
    schemas = released["components"]["schemas"]
    schemas["A"], schemas["B"] = {"$ref": "#/components/schemas/B"}, {"$ref": "#/components/schemas/A"}
    _schema(released, "NewOrder")["properties"]["items"] = {"$ref": "#/components/schemas/A"}
    with pytest.raises(ValueError, match="cycle"):
        openapi_breaking_changes(released, released)


# Event schemas ------------------------------------------------------------------------------------

EVENT: Doc = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "orders.order.created, data version 1",
    "type": "object",
    "required": ["order_id", "total_cents"],
    "properties": {
        "order_id": {"type": "string", "format": "uuid", "description": "the order's id"},
        "total_cents": {"type": "integer", "minimum": 0},
        "description": {"type": "string", "examples": ["a property named like an annotation"]},
    },
    "additionalProperties": False,
}


def _event_dirs(tmp_path: Path, change: Change) -> tuple[Path, Path]:
    released, current = tmp_path / "released", tmp_path / "current"
    for directory in (released, current):
        directory.mkdir()
        (directory / "orders.order.approved.v1.json").write_text(json.dumps({"type": "object"}))
    (released / "orders.order.created.v1.json").write_text(json.dumps(EVENT))
    changed = copy.deepcopy(EVENT)
    change(changed)
    (current / "orders.order.created.v1.json").write_text(json.dumps(changed))
    return released, current


EVENT_CHANGES: dict[str, tuple[Change, str]] = {
    "property removed": (lambda e: e["properties"].pop("total_cents"), "/properties/total_cents removed"),
    "a property named description removed": (
        lambda e: e["properties"].pop("description"),
        "/properties/description removed",
    ),
    "property added": (lambda e: e["properties"].update(note={"type": "string"}), "/properties/note added"),
    "required changed": (lambda e: e["required"].pop(), "/required changed"),
    "limit loosened": (
        lambda e: e["properties"]["total_cents"].pop("minimum"),
        "/properties/total_cents/minimum removed",
    ),
    "boolean for a number": (
        lambda e: e["properties"]["total_cents"].update(minimum=False),
        "minimum changed",
    ),
}


@pytest.mark.parametrize(("change", "expected"), EVENT_CHANGES.values(), ids=EVENT_CHANGES.keys())
def test_any_change_to_a_released_event_schema_is_breaking(
    tmp_path: Path, change: Change, expected: str
) -> None:
    [reported] = event_breaking_changes(*_event_dirs(tmp_path, change))
    assert reported.startswith("events/orders.order.created.v1.json: changed (")
    assert expected in reported
    assert reported.endswith("publish the change as orders.order.created.v2.json")


def _annotate(event: Doc) -> None:
    event["title"] = "an order was placed"
    event["description"] = "new words"
    event["properties"]["order_id"]["description"] = "other words"
    event["properties"]["description"]["examples"] = ["another"]
    event["$comment"] = "why"
    event["properties"]["total_cents"]["default"] = 0


def test_annotations_and_new_files_are_not_breaking(tmp_path: Path) -> None:
    released, current = _event_dirs(tmp_path, _annotate)
    (current / "orders.order.created.v2.json").write_text(json.dumps({"type": "object"}))
    assert event_breaking_changes(released, current) == []


def test_a_released_event_schema_removed_is_breaking(tmp_path: Path) -> None:
    released, current = _event_dirs(tmp_path, _annotate)
    (current / "orders.order.approved.v1.json").unlink()
    assert event_breaking_changes(released, current) == [
        "events/orders.order.approved.v1.json: removed (consumers of that version may still receive it)"
    ]


# AsyncAPI -----------------------------------------------------------------------------------------


def _asyncapi() -> Doc:
    def message(schema_file: str) -> Doc:
        data = {"properties": {"data": {"$ref": f"events/{schema_file}"}}}
        return {"title": schema_file, "payload": {"schema": {"allOf": [{"$ref": "cloudevent.json"}, data]}}}

    return {
        "channels": {
            "events": {
                "messages": {
                    "orders.order.created.v1": {"$ref": "#/components/messages/orders.order.created.v1"},
                    "orders.order.rejected.v1": {"$ref": "#/components/messages/orders.order.rejected.v1"},
                }
            },
            "usersQueue": {
                "messages": {
                    "orders.order.created.v1": {"$ref": "#/components/messages/orders.order.created.v1"}
                }
            },
        },
        "operations": {
            "ordersPublish": {"action": "send", "channel": {"$ref": "#/channels/events"}},
            "usersConsume": {"action": "receive", "channel": {"$ref": "#/channels/usersQueue"}},
        },
        "components": {
            "messages": {
                "orders.order.created.v1": message("orders.order.created.v1.json"),
                "orders.order.rejected.v1": message("orders.order.rejected.v1.json"),
            }
        },
    }


def _messages(document: Doc) -> Doc:
    messages: Doc = document["components"]["messages"]
    return messages


def _repoint(document: Doc) -> None:
    data = _messages(document)["orders.order.rejected.v1"]["payload"]["schema"]["allOf"][1]["properties"][
        "data"
    ]
    data["$ref"] = "events/orders.order.rejected.v2.json"


ASYNCAPI_CHANGES: dict[str, tuple[Change, str]] = {
    "message removed from a channel": (
        lambda d: d["channels"]["usersQueue"]["messages"].clear(),
        "asyncapi.yaml: channel usersQueue, message orders.order.created.v1: removed "
        "(its consumers no longer get it there)",
    ),
    "payload on another schema file": (
        _repoint,
        "asyncapi.yaml: channel events, message orders.order.rejected.v1: "
        "payload now ['orders.order.rejected.v2.json'], was ['orders.order.rejected.v1.json']",
    ),
    "operation removed": (
        lambda d: d["operations"].pop("usersConsume"),
        "asyncapi.yaml: operation usersConsume: removed",
    ),
    "operation's action changed": (
        lambda d: d["operations"]["ordersPublish"].update(action="receive"),
        'asyncapi.yaml: operation ordersPublish: action changed: "send" -> "receive"',
    ),
    "operation's channel changed": (
        lambda d: d["operations"]["usersConsume"].update(channel={"$ref": "#/channels/events"}),
        'asyncapi.yaml: operation usersConsume: channel changed: {"$ref": "#/channels/usersQueue"} '
        '-> {"$ref": "#/channels/events"}',
    ),
}


@pytest.mark.parametrize(("change", "expected"), ASYNCAPI_CHANGES.values(), ids=ASYNCAPI_CHANGES.keys())
def test_a_released_message_or_operation_lost_or_moved_is_breaking(change: Change, expected: str) -> None:
    released = _asyncapi()
    current = copy.deepcopy(released)
    change(current)
    assert asyncapi_breaking_changes(released, current) == [expected]


def _add_a_version(document: Doc) -> None:
    _messages(document)["orders.order.rejected.v2"] = {
        "payload": {"$ref": "events/orders.order.rejected.v2.json"}
    }
    document["channels"]["events"]["messages"]["orders.order.rejected.v2"] = {
        "$ref": "#/components/messages/orders.order.rejected.v2"
    }
    document["operations"]["gatewayTap"] = {"action": "receive", "channel": {"$ref": "#/channels/tap"}}
    document["channels"]["tap"] = {"messages": {}}
    _messages(document)["orders.order.created.v1"]["title"] = "An order was placed"


def test_new_messages_channels_and_operations_are_not_breaking() -> None:
    released = _asyncapi()
    current = copy.deepcopy(released)
    _add_a_version(current)
    assert asyncapi_breaking_changes(released, current) == []


# The real contracts -------------------------------------------------------------------------------


def test_the_contracts_have_no_breaking_change_since_the_last_release() -> None:
    # On a failure: publish the change as a new version (/api/v2/..., <type>.v<N+1>.json) beside the
    # old one; a change meant to break (a path removed after its sunset) is a release's to accept:
    # python -m devstack.contract_changes --release (docs/api.md).
    assert breaking_changes(ROOT) == []


def test_the_check_catches_unit_price_removed_from_a_v1_order_item() -> None:
    released = json.loads((ROOT / RELEASED / "openapi.json").read_text())
    current = public_contract()

    def follow(node: Doc) -> Doc:  # whatever the v1 schemas are named now (NewItem, NewItemV1...)
        while "$ref" in node:
            _, _, kind, name = node["$ref"].split("/")
            node = current["components"][kind][name]
        return node

    order = follow(
        current["paths"]["/api/orders"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    )
    item = follow(order["properties"]["items"]["items"])
    del item["properties"]["unit_price_cents"]
    item["required"].remove("unit_price_cents")
    assert (
        "POST /api/orders: request body: items/items/unit_price_cents: removed "
        "(a client that sends it is refused)" in openapi_breaking_changes(released, current)
    )


def test_the_check_catches_a_property_removed_from_a_released_event_schema(tmp_path: Path) -> None:
    events = shutil.copytree(ROOT / "shared/contracts/events", tmp_path / "events")
    created = json.loads((events / "orders.order.created.v1.json").read_text())
    del created["properties"]["total_cents"]
    (events / "orders.order.created.v1.json").write_text(json.dumps(created))
    [reported] = event_breaking_changes(ROOT / RELEASED / "events", events)
    assert reported.startswith(
        "events/orders.order.created.v1.json: changed (/properties/total_cents removed"
    )


def test_a_release_snapshots_the_contracts_that_the_check_then_holds_to(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contracts = tmp_path / "shared" / "contracts"
    shutil.copytree(ROOT / "shared/contracts", contracts, ignore=shutil.ignore_patterns("released"))
    assert main(["--release", "--root", str(tmp_path)]) == 0
    assert json.loads((tmp_path / RELEASED / "openapi.json").read_text()) == public_contract()
    assert main(["--root", str(tmp_path)]) == 0
    (contracts / "events" / "orders.order.created.v1.json").unlink()
    capsys.readouterr()
    assert main(["--root", str(tmp_path)]) == 1
    assert capsys.readouterr().out == (
        "events/orders.order.created.v1.json: removed (consumers of that version may still receive it)\n"
    )
