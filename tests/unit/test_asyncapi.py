"""shared/contracts/asyncapi.yaml is a valid AsyncAPI 3.0 document, and it says what the code does:
every event type and data version, who publishes it (the version its dataclass emits; the outbox
refuses an event from any other service), who receives it (exactly what each service's handler
table handles, with every version it decodes, on the durable queue shared/topology.py binds), and
payloads that are the schema files beside it in shared/contracts/, referred to and never copied.

The document is checked against the AsyncAPI Initiative's own JSON Schema of the 3.0.0
specification, kept in tests/unit/asyncapi-spec/ (see its README) so that the check runs offline.
"""

import copy
import json
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from jsonschema import Draft7Validator, Draft202012Validator
from jsonschema.exceptions import best_match
from prometheus_client import CollectorRegistry
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from orders_service.handlers import handler_table
from orders_service.metrics import SagaMetrics
from shared import schemas
from shared.bus_contract import CONTRACT, bus
from shared.consumer import HandlerTable
from shared.events import DECODERS, EVENT_TYPES, CreditLimitChanged
from shared.topology import EXCHANGE
from tests.unit.event_samples import sample_envelope
from users_service.handlers import HANDLERS

DOCUMENT_PATH = CONTRACT
DOCUMENT: dict[str, Any] = yaml.safe_load(DOCUMENT_PATH.read_text())
SPEC_SCHEMA = json.loads((Path(__file__).parent / "asyncapi-spec" / "asyncapi-3.0.0.schema.json").read_text())

ENVELOPE_REF = "cloudevent.json"
# What each consuming service handles: the keys of its handler table, the one place it says so.
HANDLED: dict[str, HandlerTable] = {
    "users_service": HANDLERS,
    "orders_service": handler_table(SagaMetrics(CollectorRegistry())),
}

Version = tuple[str, int]


def spec_errors(document: dict[str, Any]) -> list[str]:
    """How the document breaks the AsyncAPI 3.0.0 specification's schema."""
    # An operation is an Operation or a Reference (oneOf): the deepest error says what is wrong.
    deepest = (best_match([error]) for error in Draft7Validator(SPEC_SCHEMA).iter_errors(document))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:200]}" for e in deepest if e]


# ---- how the document disagrees with the code --------------------------------------------------


def problems(document: dict[str, Any]) -> list[str]:
    """Every way the document disagrees with the contracts in shared/ and the topology; empty if none."""
    found = _dangling_references(document)
    if found:
        return found  # the other checks follow references
    return _payload_problems(document) + _routing_problems(document)


def _references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _references(value)
    elif isinstance(node, list):
        for value in node:
            yield from _references(value)


def _follow(document: dict[str, Any], ref: str) -> Any:
    """The node a reference inside the document points at (a KeyError if nothing is there)."""
    node: Any = document
    for token in ref.removeprefix("#/").split("/"):
        node = node[urllib.parse.unquote(token).replace("~1", "/").replace("~0", "~")]
    return node


def _dangling_references(document: dict[str, Any]) -> list[str]:
    found = []
    contracts = schemas.CONTRACTS.resolve()
    for ref in _references(document):
        if ref.startswith("#/"):
            try:
                _follow(document, ref)
            except (KeyError, IndexError, TypeError):
                found.append(f"{ref} points at nothing")
            continue
        target = (DOCUMENT_PATH.parent / ref).resolve()
        if not target.is_relative_to(contracts):
            found.append(f"{ref} is not a contract in shared/contracts/")
        elif not target.is_file():
            found.append(f"{ref} is no file")
    return found


def _version_of(message: dict[str, Any]) -> Version:
    properties = message["payload"]["schema"]["allOf"][1]["properties"]
    return properties["type"]["const"], properties["dataversion"]["const"]


def _payload_problems(document: dict[str, Any]) -> list[str]:
    found = []
    described: set[Version] = set()
    for key, message in document["components"]["messages"].items():
        name = message.get("name")
        try:
            version = _version_of(message)
        except (KeyError, IndexError, TypeError):
            found.append(f"message {key}: the payload is not the envelope with its data by reference")
            continue
        described.add(version)
        expected_payload = {
            "schemaFormat": "application/schema+json;version=draft-2020-12",
            "schema": {
                "allOf": [
                    {"$ref": ENVELOPE_REF},
                    {
                        "properties": {
                            "type": {"const": name},
                            "dataversion": {"const": version[1]},
                            "data": {"$ref": f"events/{name}.v{version[1]}.json"},
                        }
                    },
                ]
            },
        }
        if message["payload"] != expected_payload:
            found.append(f"message {key}: the payload is not the envelope with its data by reference")
        if (
            key != f"{name}.v{version[1]}"
            or message.get("bindings", {}).get("amqp", {}).get("messageType") != name
        ):
            found.append(f"message {key}: its key, name and AMQP type do not all name {name} v{version[1]}")
    found += [f"no message for {t} v{v}" for t, v in sorted(set(schemas.EVENT_DATA) - described)]
    found += [
        f"message for {t} v{v}, which has no schema" for t, v in sorted(described - set(schemas.EVENT_DATA))
    ]
    return found


def _operation_messages(document: dict[str, Any], operation: dict[str, Any]) -> set[Version]:
    return {
        _version_of(_follow(document, _follow(document, ref["$ref"])["$ref"]))
        for ref in operation["messages"]
    }


DURABLE_TOPIC_EXCHANGE = {
    "name": EXCHANGE,
    "type": "topic",
    "durable": True,
    "autoDelete": False,
    "vhost": "/",
}


def _routing_problems(document: dict[str, Any]) -> list[str]:
    sent: dict[str, set[Version]] = {}
    received: dict[str, set[Version]] = {}
    watched: set[Version] = set()
    found = []
    for key, operation in document["operations"].items():
        channel_ref = operation["channel"]["$ref"]
        channel = _follow(document, channel_ref)
        amqp = channel["bindings"]["amqp"]
        [service] = [tag["name"] for tag in operation["tags"]]
        if any(not ref["$ref"].startswith(f"{channel_ref}/messages/") for ref in operation["messages"]):
            found.append(f"operation {key}: a message is not one of its channel's")
        messages = _operation_messages(document, operation)
        if operation["action"] == "send":
            sent.setdefault(service, set()).update(messages)
            if amqp.get("exchange") != DURABLE_TOPIC_EXCHANGE:
                found.append(f"operation {key}: does not publish to the durable topic exchange {EXCHANGE}")
            continue
        found += _receiving_problems(document, key, service, channel, messages)
        if amqp.get("is") == "queue" and amqp["queue"]["durable"]:
            received.setdefault(service, set()).update(messages)
        elif amqp.get("is") == "queue":
            watched |= messages  # a flow tap: it watches, it need not receive
    found += _publishing_problems(sent)
    found += _handling_problems(received)
    if watched and watched != set(DECODERS):
        found.append("a flow tap does not watch every event")
    return found


def _receiving_problems(
    document: dict[str, Any], key: str, service: str, channel: dict[str, Any], messages: set[Version]
) -> list[str]:
    amqp = channel["bindings"]["amqp"]
    if amqp.get("is") != "queue":
        return [f"operation {key}: does not receive from a queue"]
    found = []
    if amqp["queue"]["durable"] and amqp["queue"]["name"] != service:
        found.append(f"operation {key}: does not consume from the durable queue {service}")
    channel_messages = {_version_of(_follow(document, ref["$ref"])) for ref in channel["messages"].values()}
    if channel_messages != messages:
        found.append(f"operation {key}: receives other messages than its queue is bound to")
    return found


def _publishing_problems(sent: dict[str, set[Version]]) -> list[str]:
    emitted = {(event.TYPE, event.DATAVERSION) for event in EVENT_TYPES.values()}
    published: set[Version] = set().union(*sent.values())
    found = [f"{t} v{v} has no publisher" for t, v in sorted(emitted - published)]
    found += [f"{t} v{v} is published, but no dataclass emits it" for t, v in sorted(published - emitted)]
    if sum(len(versions) for versions in sent.values()) != len(published):
        found.append("an event type has more than one publisher")
    return found


def _handling_problems(received: dict[str, set[Version]]) -> list[str]:
    expected_received = {
        service: {version for version in DECODERS if version[0] in {event.TYPE for event in table}}
        for service, table in HANDLED.items()
    }
    found = []
    for service in sorted(received.keys() | expected_received.keys()):
        got, wanted = received.get(service, set()), expected_received.get(service, set())
        found += [f"{service} handles {t} v{v}, which it does not receive" for t, v in sorted(wanted - got)]
        found += [f"{service} receives {t} v{v}, which it does not handle" for t, v in sorted(got - wanted)]
    return found


# ---- the document is valid and agrees with the code ---------------------------------------------


def test_the_document_is_valid_asyncapi_3_0() -> None:
    assert DOCUMENT["asyncapi"] == "3.0.0"
    assert spec_errors(DOCUMENT) == []


def test_the_document_agrees_with_the_contracts_and_the_topology() -> None:
    assert problems(DOCUMENT) == []


def _registry() -> Registry[Any]:
    """The document and every contract file under its own file URI, so that relative $refs resolve as
    an AsyncAPI tool resolves them: from the document's folder."""
    resources = [(DOCUMENT_PATH.as_uri(), DOCUMENT)] + [
        (path.as_uri(), json.loads(path.read_text())) for path in schemas.CONTRACTS.rglob("*.json")
    ]
    return Registry().with_resources(
        (uri, Resource.from_contents(contents, default_specification=DRAFT202012))
        for uri, contents in resources
    )


@pytest.mark.parametrize("version", sorted(schemas.EVENT_DATA), ids=lambda v: f"{v[0]}.v{v[1]}")
def test_each_message_describes_the_body_on_the_wire(version: Version) -> None:
    payload = f"{DOCUMENT_PATH.as_uri()}#/components/messages/{version[0]}.v{version[1]}/payload/schema"
    validator = Draft202012Validator(
        {"$ref": payload}, registry=_registry(), format_checker=Draft202012Validator.FORMAT_CHECKER
    )
    body = orjson.loads(sample_envelope(*version).to_json())
    assert list(validator.iter_errors(body)) == []
    assert not validator.is_valid({**body, "data": {}}), "the data's schema is not applied"
    assert not validator.is_valid({k: v for k, v in body.items() if k != "id"}), "the envelope is not applied"
    other_versions = [v for v in sorted(schemas.EVENT_DATA) if v != version]
    for other in other_versions:
        assert not validator.is_valid(orjson.loads(sample_envelope(*other).to_json())), other


# ---- a document that breaks its contract fails these tests -------------------------------------


def _mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    document = copy.deepcopy(DOCUMENT)
    change(document)
    return document


def _messages(document: dict[str, Any]) -> dict[str, Any]:
    messages: dict[str, Any] = document["components"]["messages"]
    return messages


def _inline_payload(document: dict[str, Any]) -> None:
    data = _messages(document)["users.credit.reserved.v1"]["payload"]["schema"]["allOf"][1]["properties"][
        "data"
    ]
    data.clear()
    data.update(schemas.EVENT_DATA[("users.credit.reserved", 1)].document)


def _forget_v2_at_orders(document: dict[str, Any]) -> None:
    forgotten = {"$ref": "#/channels/ordersServiceQueue/messages/users.credit.rejected.v2"}
    document["operations"]["ordersServiceConsumes"]["messages"].remove(forgotten)
    del document["channels"]["ordersServiceQueue"]["messages"]["users.credit.rejected.v2"]


def _producer_sends_v2(document: dict[str, Any]) -> None:
    document["operations"]["usersServicePublishes"]["messages"].append(
        {"$ref": "#/channels/events/messages/users.credit.rejected.v2"}
    )


def _drop_message(document: dict[str, Any]) -> None:
    del _messages(document)["users.credit.released.v1"]
    for channel in document["channels"].values():
        channel["messages"].pop("users.credit.released.v1", None)
    for operation in document["operations"].values():
        operation["messages"] = [m for m in operation["messages"] if "users.credit.released" not in m["$ref"]]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            lambda d: _messages(d)["orders.order.created.v1"]["payload"]["schema"]["allOf"][1]["properties"][
                "data"
            ].update({"$ref": "events/orders.order.created.v9.json"}),
            "events/orders.order.created.v9.json is no file",
        ),
        (
            lambda d: d["operations"]["usersServiceConsumes"]["channel"].update(
                {"$ref": "#/channels/usersQueue"}
            ),
            "#/channels/usersQueue points at nothing",
        ),
        (
            _inline_payload,
            "message users.credit.reserved.v1: the payload is not the envelope with its data by reference",
        ),
        (_drop_message, "no message for users.credit.released v1"),
        (
            _forget_v2_at_orders,
            "orders_service handles users.credit.rejected v2, which it does not receive",
        ),
        (
            _producer_sends_v2,
            "users.credit.rejected v2 is published, but no dataclass emits it",
        ),
        (
            lambda d: d["channels"]["ordersServiceQueue"]["bindings"]["amqp"]["queue"].update(
                {"name": "orders"}
            ),
            "operation ordersServiceConsumes: does not consume from the durable queue orders_service",
        ),
    ],
    ids=[
        "dangling file",
        "dangling pointer",
        "copied schema",
        "missing event",
        "consumer without v2",
        "producer emits v2 early",
        "wrong queue",
    ],
)
def test_a_document_that_disagrees_with_the_code_is_caught(
    change: Callable[[dict[str, Any]], None], problem: str
) -> None:
    assert problem in problems(_mutated(change))


def test_a_document_that_is_not_asyncapi_3_0_is_caught() -> None:
    # AsyncAPI 2's verbs: in 3.0 an operation sends or receives.
    document = _mutated(lambda d: d["operations"]["usersServicePublishes"].update({"action": "publish"}))
    assert (
        "operations/usersServicePublishes/action: 'publish' is not one of ['send', 'receive']"
        in spec_errors(document)
    )


def _operations_with(document: dict[str, Any], version: Version) -> dict[str, str]:
    """operation key -> its action, for each operation that has the message of `version`."""
    return {
        key: operation["action"]
        for key, operation in document["operations"].items()
        if version in _operation_messages(document, operation)
    }


def test_a_credit_limit_change_is_sent_by_users_service_received_by_none_and_watched_by_the_tap() -> None:
    # An announcement for whoever keeps a view of users: no service acts on it (yet), so no service
    # queue is bound for it, and the flow page shows it like every other event.
    version = (CreditLimitChanged.TYPE, CreditLimitChanged.DATAVERSION)
    assert version == ("users.credit.limit_changed", 1)
    assert _operations_with(DOCUMENT, version) == {
        "usersServicePublishes": "send",
        "gatewayFlowTapReceives": "receive",
    }
    # The bus's contract, read from the document, says the same (and the broker's permissions are
    # made from it: users_service may publish it).
    contract = bus()
    assert CreditLimitChanged.TYPE in contract.sends("users_service")
    assert CreditLimitChanged.TYPE not in contract.receivers
    assert contract.watchers == ("gateway",)
    assert all(CreditLimitChanged not in table for table in HANDLED.values())
