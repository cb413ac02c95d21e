"""Evolving an event (docs/events.md): during the transition to users.credit.rejected version 2, its
consumer accepts both versions and hands its handler the same event, while producers emit version 1."""

import dataclasses
import functools
import uuid
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from orders_service import saga
from orders_service.handlers import handler_table, on_credit_rejected
from orders_service.metrics import SagaMetrics
from shared.bus_contract import bus
from shared.envelope import Envelope, InvalidEvent
from shared.events import DECODERS, EVENT_TYPES, CreditRejected, Event
from tests.unit.event_samples import CAUSE

ORDER_ID, USER_ID = uuid.uuid4(), uuid.uuid4()
V1_DATA: dict[str, Any] = {
    "order_id": str(ORDER_ID),
    "user_id": str(USER_ID),
    "reason": "insufficient_credit",
}
V2_DATA: dict[str, Any] = {
    "order_id": str(ORDER_ID),
    "user_id": str(USER_ID),
    "reason": {
        "code": "insufficient_credit",
        "message": "The order's total exceeds the credit left by 1200 cents.",
    },
}


def _received(dataversion: int, data: dict[str, Any]) -> bytes:
    envelope = Envelope.wrap(
        CreditRejected(ORDER_ID, USER_ID, "insufficient_credit"), source="users", cause=CAUSE
    )
    return dataclasses.replace(envelope, dataversion=dataversion, data=data).to_json()


def test_version_1_and_version_2_reach_the_handler_as_the_same_event() -> None:
    from_v1 = Envelope.from_json(_received(1, V1_DATA)).event()
    from_v2 = Envelope.from_json(_received(2, V2_DATA)).event()
    assert from_v1 == from_v2 == CreditRejected(ORDER_ID, USER_ID, "insufficient_credit")
    # One handler, which never sees a version, and so decides the same for both.
    handlers = cast(dict[type, functools.partial[Any]], handler_table(SagaMetrics(CollectorRegistry())))
    assert handlers[type(from_v1)].func is handlers[type(from_v2)].func is on_credit_rejected
    assert isinstance(from_v1, CreditRejected)
    assert isinstance(from_v2, CreditRejected)
    decide = saga.on_credit_rejected
    assert decide(ORDER_ID, USER_ID, saga.OrderStatus.PENDING, from_v1.reason) == decide(
        ORDER_ID, USER_ID, saga.OrderStatus.PENDING, from_v2.reason
    )


def test_producers_emit_version_1_until_every_consumer_accepts_version_2() -> None:
    envelope = Envelope.wrap(CreditRejected(ORDER_ID, USER_ID, "unknown_user"), source="users", cause=CAUSE)
    assert (envelope.dataversion, envelope.data["reason"]) == (1, "unknown_user")
    # The consumers of the type (orders_service) accept both versions, through the shared decoders.
    assert "users.credit.rejected" in bus().receives("orders_service")
    assert {(CreditRejected.TYPE, 1), (CreditRejected.TYPE, 2)} <= set(DECODERS)


@pytest.mark.parametrize("event_class", EVENT_TYPES.values(), ids=lambda c: c.TYPE)
def test_a_version_no_consumer_knows_is_refused_not_guessed(event_class: type[Event]) -> None:
    envelope = Envelope.wrap(CreditRejected(ORDER_ID, USER_ID, "unknown_user"), source="users", cause=CAUSE)
    unknown = max(version for event_type, version in DECODERS if event_type == event_class.TYPE) + 1
    body = dataclasses.replace(envelope, type=event_class.TYPE, dataversion=unknown).to_json()
    with pytest.raises(InvalidEvent, match=f"^{event_class.TYPE} has no data version {unknown}$"):
        Envelope.from_json(body).event()
