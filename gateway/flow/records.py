"""What the flow page draws: one record per arrow of a sequence diagram, and its JSON on the wire.

A record names its kind, the lane it starts from and the lane it points to, a label, its time, the
story it belongs to (the correlation id, which is the X-Request-ID) and the order it concerns when
there is one; an event's record carries its whole envelope. The lanes of the services are their
names; the others are the three below.
"""

import dataclasses
import datetime
import enum
from typing import Any

import orjson

CLIENT, GATEWAY, BROKER = "client", "gateway", "broker"


class Kind(enum.StrEnum):
    HTTP_REQUEST = "http.request"
    HTTP_RESPONSE = "http.response"
    EVENT_PUBLISHED = "event.published"
    EVENT_DELIVERED = "event.delivered"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass(frozen=True)
class FlowRecord:
    """One arrow of the diagram, from lane `source` to lane `target`."""

    kind: Kind
    source: str
    target: str
    label: str
    correlation_id: str | None
    order_id: str | None = None
    type: str | None = None  # the event type
    method: str | None = None
    path: str | None = None
    status: int | None = None  # None on a response arrow: no answer came
    ms: float | None = None
    envelope: Any = None  # the event as it was on the wire (parsed JSON, or its text if it was not JSON)
    problem: str | None = None  # why a consumer will refuse this message (it is dead-lettered)
    time: datetime.datetime = dataclasses.field(default_factory=_now)

    def to_json(self, record_id: str) -> bytes:
        return orjson.dumps(
            {
                "id": record_id,
                "kind": self.kind,
                "from": self.source,
                "to": self.target,
                "label": self.label,
                "time": self.time,
                "correlation_id": self.correlation_id,
                "order_id": self.order_id,
                "type": self.type,
                "method": self.method,
                "path": self.path,
                "status": self.status,
                "ms": self.ms,
                "envelope": self.envelope,
                "problem": self.problem,
            },
            option=orjson.OPT_UTC_Z,
        )
