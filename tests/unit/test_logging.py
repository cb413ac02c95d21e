"""The console log format: one aligned line per step, so interleaved services read as one story."""

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from shared.logging import STEP_WIDTH, SUBJECT_WIDTH, StoryRenderer, configure_logging, use_colours

HTTP_LINE = {
    "timestamp": "17:23:01.452123",
    "service": "orders_service",
    "level": "info",
    "event": "http request",
    "method": "POST",
    "path": "/api/orders",
    "status": 202,
    "ms": 9.8,
    "correlation_id": "demo-1",
}
EVENT_LINE = {
    "timestamp": "17:23:01.455001",
    "service": "orders_service",
    "level": "info",
    "event": "published, confirmed",
    "type": "orders.order.created",
    "correlation_id": "demo-1",
    "order": "5c1e2f3a",
    "confirm_ms": 1.8,
}


def render(fields: dict[str, object], *, colours: bool = False) -> str:
    return StoryRenderer(colours=colours)(None, "info", dict(fields))


def test_an_http_line_shows_the_exchange_and_its_story_id() -> None:
    assert render(HTTP_LINE) == (
        "17:23:01.452 orders_service INF "
        + "http request".ljust(STEP_WIDTH)
        + " "
        + "POST /api/orders → 202 9.8ms".ljust(SUBJECT_WIDTH)
        + " corr=demo-1"
    )


def test_an_event_line_shows_its_type_then_the_story_and_subject_ids_then_the_rest() -> None:
    line = render(EVENT_LINE)
    assert line.endswith(
        "orders.order.created".ljust(SUBJECT_WIDTH) + " corr=demo-1 order=5c1e2f3a confirm_ms=1.8"
    )


def test_the_columns_line_up_whatever_the_step() -> None:
    lines = [render(HTTP_LINE), render(EVENT_LINE), render({**EVENT_LINE, "event": "consumed"})]
    subject_column = {
        line.index(" POST") if "POST" in line else line.index(" orders.order") for line in lines
    }
    assert len(subject_column) == 1


def test_warnings_are_marked_and_values_with_spaces_are_quoted() -> None:
    line = render({**EVENT_LINE, "level": "warning", "event": "retry scheduled", "error": "boom went it"})
    assert " WRN retry scheduled" in line
    assert "error='boom went it'" in line


def test_colours_only_when_asked_for() -> None:
    assert "\x1b[" not in render(HTTP_LINE)
    assert "\x1b[" in render(HTTP_LINE, colours=True)


@pytest.mark.parametrize(
    ("environment", "tty", "expected"),
    [
        ({}, True, True),
        ({}, False, False),
        ({"NO_COLOR": "1"}, True, False),
        ({"FORCE_COLOR": "1"}, False, True),
    ],
)
def test_colours_follow_the_terminal_and_the_no_color_conventions(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], tty: bool, expected: bool
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    for name, setting in environment.items():
        monkeypatch.setenv(name, setting)

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert use_colours(Stream()) is expected


@pytest.fixture
def reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


@pytest.mark.usefixtures("reset_logging")
def test_json_lines_for_machines_carry_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(service="users_service", fmt="json")
    structlog.get_logger("test").info("consumed", type="orders.order.created", correlation_id="c-1")
    document = json.loads(capsys.readouterr().err)
    assert document["service"] == "users_service"
    assert document["event"] == "consumed"
    assert document["type"] == "orders.order.created"
    assert document["correlation_id"] == "c-1"
    assert document["level"] == "info"
    assert document["timestamp"].endswith("Z")


@pytest.mark.usefixtures("reset_logging")
def test_the_level_setting_filters_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(service="gateway", level="WARNING", fmt="console")
    structlog.get_logger("test").info("not shown")
    structlog.get_logger("test").warning("shown")
    output = capsys.readouterr().err
    assert "not shown" not in output
    assert " WRN shown" in output


# A path as a client can send it: %0a starts a forged line, %1b[...] commands the terminal, U+202E
# reverses what follows on screen.
HOSTILE_PATH = "/api/\n12:00:00.000 gateway INF forged\x1b[2J\x1b[31mred\u202eevil"


def test_what_a_client_sent_cannot_break_the_line_or_command_the_terminal() -> None:
    fields = {**HTTP_LINE, "path": HOSTILE_PATH, "header": "a\rb\x07", "error": "x y\x1b[0m", "\x1b": "k"}
    for colours in (False, True):
        line = render(fields, colours=colours)
        assert "\n" not in line
        assert "\r" not in line
        assert "\x07" not in line
        assert "\u202e" not in line
        # The only escape sequences left are the renderer's own colours.
        assert line.replace("\x1b[", "").count("\x1b") == 0
        assert not any(code in line for code in ("\x1b[2J", "\x1b[31mred"))
    line = render(fields)
    assert "/api/\\n12:00:00.000 gateway INF forged\\x1b[2J\\x1b[31mred\\u202eevil" in line
    assert "header=a\\rb\\x07" in line
    assert "error='x y\\x1b[0m'" in line
    assert "\\x1b=k" in line


def test_a_traceback_keeps_its_lines_but_nothing_else_raw() -> None:
    line = render({**HTTP_LINE, "exception": "Traceback:\n  boom \x1b[2J"})
    assert line.endswith("\nTraceback:\n  boom \\x1b[2J")


def test_printable_text_is_left_as_it_is() -> None:
    text = "GET /api/orders?cursor=a%0Ab → 200 ünïcode 注文 \\x1b"
    assert render({**HTTP_LINE, "path": text}).count(text) == 1


@pytest.mark.usefixtures("reset_logging")
def test_json_lines_stay_one_json_document_whatever_a_client_sent(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(service="gateway", fmt="json")
    structlog.get_logger("test").info("http request", path=HOSTILE_PATH, method="GET")
    [line] = capsys.readouterr().err.splitlines()
    assert "\x1b" not in line
    assert json.loads(line)["path"] == HOSTILE_PATH  # escaped by JSON itself, and nothing lost
