import base64
import datetime
import uuid

import pytest

from orders_service.services import InvalidCursor, decode_cursor, encode_cursor


def test_a_cursor_round_trips_to_the_same_position() -> None:
    position = (datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.UTC), uuid.uuid4())
    assert decode_cursor(encode_cursor(*position)) == position


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


SOME_ID = "6f1c2b1e-8d4a-4f0e-9a57-0c9a3a6f2d11"


@pytest.mark.parametrize(
    "cursor",
    [
        "x",
        "!!!!",
        b64("null"),
        b64('["2026-01-01T00:00:00+00:00"]'),
        b64(f'["yesterday", "{SOME_ID}"]'),
        b64('["2026-01-01T00:00:00+00:00", "not-a-uuid"]'),
        b64(f'["2026-01-01T00:00:00", "{SOME_ID}"]'),
    ],
    ids=["short", "not-base64", "null", "one-element", "bad-time", "bad-id", "time-without-zone"],
)
def test_a_cursor_we_did_not_issue_is_invalid(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        decode_cursor(cursor)
