"""Structured logging: lines that read as a story for people, JSON lines for machines.

Context such as the correlation id is bound with `structlog.contextvars`, so every line logged while
handling a request or a message carries it without passing a logger around.

The console format puts the same things in the same columns on every line, so that the interleaved
output of several services (`make dev`, `docker compose logs -f`) reads top to bottom as one story:

    17:23:01.452 orders_service INF http request         POST /api/orders → 202 9.8ms  corr=demo-1
    17:23:01.453 orders_service INF outbox written       orders.order.created          corr=demo-1 order=5c1e
    17:23:01.455 orders_service INF published, confirmed orders.order.created          corr=demo-1 order=5c1e
    17:23:01.460 users_service  INF consumed             orders.order.created          corr=demo-1 order=5c1e

Much of what a line shows came from a client (a request's path, a header, an id), and a terminal
obeys what it prints: a newline in a URL (`%0a`) would start a forged line, an escape sequence
(`%1b[2J`) would clear the screen or recolour what follows. So the console line escapes every
character that does not print (as `\n`, `\x1b`, `\u2028`), whatever field it is in; only the
renderer's own colours reach the terminal raw. JSON lines need nothing more: JSON escapes control
characters itself, so each line stays one JSON document.
"""

import logging
import os
import sys
import zlib
from typing import Any

import orjson
import structlog
from opentelemetry import trace

SERVICE_WIDTH = 14
STEP_WIDTH = 20
SUBJECT_WIDTH = 44
_LEVELS = {"debug": "DBG", "info": "INF", "warning": "WRN", "error": "ERR", "critical": "CRT"}
_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_LEVEL_COLOURS = {"WRN": "\x1b[33m", "ERR": "\x1b[31;1m", "CRT": "\x1b[31;1m", "DBG": _DIM}
_SERVICE_COLOURS = ("\x1b[36m", "\x1b[35m", "\x1b[32m", "\x1b[34m", "\x1b[33m")


def use_colours(stream: Any) -> bool:
    """Colours on a terminal only, as the NO_COLOR and FORCE_COLOR conventions allow overriding:
    `make dev` forces them because honcho passes the output through a pipe."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    return bool(getattr(stream, "isatty", lambda: False)())


class StoryRenderer:
    """Renders an event dict as one aligned line: time, service, level, step, subject, the rest."""

    def __init__(self, *, colours: bool) -> None:
        self.colours = colours

    def __call__(self, _logger: object, _method: str, event_dict: structlog.types.EventDict) -> str:
        fields = dict(event_dict)
        time = str(fields.pop("timestamp", ""))[:12]  # HH:MM:SS.mmm
        service = printable(str(fields.pop("service", "-")))
        level = _LEVELS.get(str(fields.pop("level", "info")), "???")
        step = printable(str(fields.pop("event", "")))
        subject = printable(self._subject(fields))
        details = " ".join(f"{printable(str(key))}={_plain(value)}" for key, value in self._ordered(fields))
        exception = fields.pop("exception", None)
        if exception:
            # A traceback keeps its lines; any other character that does not print is escaped.
            exception = "\n".join(printable(line) for line in str(exception).split("\n"))
        line = " ".join(
            (
                self._paint(time, _DIM),
                self._paint(service.ljust(SERVICE_WIDTH), _service_colour(service)),
                self._paint(level, _LEVEL_COLOURS.get(level, "")),
                step.ljust(STEP_WIDTH),
                self._paint(subject.ljust(SUBJECT_WIDTH), _BOLD),
                details,
            )
        ).rstrip()
        return f"{line}\n{exception}" if exception else line

    @staticmethod
    def _subject(fields: dict[str, Any]) -> str:
        """What the line is about: an HTTP exchange, or an event's type."""
        if "method" in fields and "path" in fields:
            method, path = fields.pop("method"), fields.pop("path")
            if "status" not in fields:
                return f"{method} {path}"
            status, ms = fields.pop("status"), fields.pop("ms", None)
            return f"{method} {path} → {status}" + (f" {ms}ms" if ms is not None else "")
        return str(fields.pop("type", ""))

    @staticmethod
    def _ordered(fields: dict[str, Any]) -> list[tuple[str, Any]]:
        """The story's ids first (correlation, then the subject's short id), then the rest as logged."""
        first = [("corr", fields.pop("correlation_id"))] if "correlation_id" in fields else []
        first += [(key, fields.pop(key)) for key in ("order", "user") if key in fields]
        return first + [(key, value) for key, value in fields.items() if key != "exception"]

    def _paint(self, text: str, colour: str) -> str:
        return f"{colour}{text}{_RESET}" if self.colours and colour else text


def _plain(value: object) -> str:
    text = str(value)
    # repr quotes, and escapes what does not print just as `printable` does.
    return repr(text) if " " in text or not text else printable(text)


def printable(text: str) -> str:
    """`text` with every character that does not print escaped, so that it can neither break the
    line nor command the terminal: control characters (newline, ESC), line and paragraph
    separators, and invisible formatting characters (such as right-to-left overrides)."""
    if text.isprintable():
        return text  # nearly always: one fast check
    return "".join(character if character.isprintable() else _escaped(character) for character in text)


def _escaped(character: str) -> str:
    code = ord(character)
    if character in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[character]
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _service_colour(service: str) -> str:
    # A stable colour per service name, so each service keeps its colour from run to run.
    return _SERVICE_COLOURS[zlib.crc32(service.encode()) % len(_SERVICE_COLOURS)]


def _orjson_dumps(event: object, **_: object) -> str:
    return orjson.dumps(event, default=str).decode()


def _add_trace_ids(
    _logger: object, _method: str, event_dict: structlog.types.EventDict
) -> structlog.types.EventDict:
    """In JSON lines, the ids that join a line to its trace in Jaeger (when tracing is on)."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


def configure_logging(*, service: str, level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and the standard library (aiohttp, asyncpg, aio-pika) to one output."""
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        _add_service(service),
    ]
    renderer: structlog.types.Processor
    if fmt == "json":
        shared_processors += [
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace_ids,
            structlog.processors.format_exc_info,
        ]
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        shared_processors += [
            structlog.processors.TimeStamper(fmt="%H:%M:%S.%f", utc=True),
            structlog.processors.format_exc_info,
        ]
        renderer = StoryRenderer(colours=use_colours(sys.stderr))

    structlog.configure(
        # The level is checked first, so that a line below LOG_LEVEL costs nothing more.
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's own access log would duplicate the one line per request that shared.http writes.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _add_service(service: str) -> structlog.types.Processor:
    def add_service(
        _logger: object, _method: str, event_dict: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add_service
