"""The bus's contract, read as data: who publishes each event type, and which services must receive it.

shared/contracts/asyncapi.yaml (AsyncAPI 3.0) is the published contract of the events exchange. Its
operations say, per service (the operation's tag), what it sends and what it receives. The code that
must know about services other than its own reads that here, so that shared/ names none of them:

- a publisher declares the queues of the services that must receive its events, bound for those
  events, so that an event published before its consumer ever started is queued (shared/topology.py),
  and publishes those events as mandatory (shared/relay.py);
- a consumer accepts each event type only from the broker user of its publisher (shared/consumer.py);
- the broker's users, permissions and policies follow from it (shared/broker_setup.py).

Each service's own subscriptions come from its handler table; tests/unit/test_asyncapi.py holds every
handler table to its service's receive operation, and the event registry to the send operations.
A receiver is a service with a durable queue; a gateway's flow tap (exclusive, for watching) is not.
"""

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

CONTRACT = Path(__file__).parent / "contracts" / "asyncapi.yaml"


@dataclasses.dataclass(frozen=True)
class BusContract:
    publisher: Mapping[str, str]  # event type -> the service that publishes it
    receivers: Mapping[str, tuple[str, ...]]  # event type -> the services that must receive it
    services: tuple[str, ...]  # every service that sends or receives
    watchers: tuple[str, ...] = ()  # services that watch every event (a flow tap), receiving none

    def sends(self, service: str) -> tuple[str, ...]:
        return tuple(sorted(t for t, publisher in self.publisher.items() if publisher == service))

    def receives(self, service: str) -> tuple[str, ...]:
        return tuple(sorted(t for t, receivers in self.receivers.items() if service in receivers))

    def receivers_of_what(self, service: str) -> dict[str, tuple[str, ...]]:
        """The services that must receive what `service` publishes: receiver -> those event types."""
        found: dict[str, list[str]] = {}
        for event_type in self.sends(service):
            for receiver in self.receivers.get(event_type, ()):
                found.setdefault(receiver, []).append(event_type)
        return {receiver: tuple(types) for receiver, types in sorted(found.items())}


def load(path: Path = CONTRACT) -> BusContract:
    document = yaml.safe_load(path.read_text())
    publisher: dict[str, str] = {}
    receivers: dict[str, list[str]] = {}
    services: set[str] = set()
    watchers: set[str] = set()
    for key, operation in document["operations"].items():
        [service] = [tag["name"] for tag in operation["tags"]]
        services.add(service)
        channel = _follow(document, operation["channel"]["$ref"])
        types = {_follow(document, reference["$ref"])["name"] for reference in operation["messages"]}
        if operation["action"] == "send":
            for event_type in types:
                if publisher.setdefault(event_type, service) != service:
                    raise ValueError(
                        f"{event_type} has two publishers: {publisher[event_type]} and {service}"
                    )
        elif operation["action"] != "receive":
            raise ValueError(f"operation {key}: unknown action {operation['action']!r}")
        elif channel["bindings"]["amqp"]["queue"]["durable"]:
            for event_type in types:
                receivers.setdefault(event_type, []).append(service)
        else:
            watchers.add(service)
    return BusContract(
        publisher=publisher,
        receivers={event_type: tuple(sorted(names)) for event_type, names in receivers.items()},
        services=tuple(sorted(services)),
        watchers=tuple(sorted(watchers)),
    )


def _follow(document: dict[str, Any], reference: str) -> Any:
    """What a local $ref ('#/a/b') points at, following $refs on the way (as messages are refs)."""
    node: Any = document
    for part in reference.removeprefix("#/").split("/"):
        node = node[part]
        while isinstance(node, dict) and set(node) == {"$ref"}:
            node = _follow(document, node["$ref"])
    return node


@functools.cache
def bus() -> BusContract:
    """The contract this code ships with."""
    return load()
