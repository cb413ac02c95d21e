"""An open-loop, fixed-rate HTTP/1.1 load generator (no coordinated omission).

    python -m bench.openloop --url URL --rate 500 --duration 10 [--header 'Name: value'] ...

wrk is closed-loop: each connection waits for its answer before sending again, so a slow moment of
the server also slows the generator, and the requests that would have waited are never sent: the
tail disappears from the histogram (coordinated omission). Debian packages no open-loop generator
(no wrk2, vegeta, k6 or oha), so this one is ours:

- a ticker thread sleeps until each request's scheduled time (i / rate) and hands it to the event
  loop, whatever the answers are doing (a thread, because the event loop's timers only have
  millisecond resolution);
- a request goes out on an idle keep-alive connection, on a new one when all are busy (up to
  `--max-connections`), or waits for the next free one;
- its latency runs from its scheduled time, not from when it was sent, so any wait, the
  generator's own included, counts against the server as it would for a real client. How late the
  generator itself sent (its lag) is reported beside, so its own limits are visible.

The result is one JSON object on stdout.
"""

import argparse
import asyncio
import collections
import sys
import threading
import time
from typing import Any, cast
from urllib.parse import urlsplit

import orjson
import uvloop

from bench.stats import latency_percentiles

NS_PER_MS = 1_000_000


def response_length(buffer: bytes | bytearray) -> tuple[int, int] | None:
    """(bytes of the first complete response in `buffer`, its status), or None while incomplete.

    Enough of HTTP/1.1 for our servers' answers: a Content-Length body or a chunked one.
    """
    head_end = buffer.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    status = int(buffer[9:12])
    body_start = head_end + 4
    head = bytes(buffer[:head_end]).lower()
    marker = head.find(b"\r\ncontent-length:")
    if marker >= 0:
        line_end = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
        end = body_start + length
        return (end, status) if len(buffer) >= end else None
    if b"\r\ntransfer-encoding: chunked" in head:
        position = body_start
        while True:
            size_end = buffer.find(b"\r\n", position)
            if size_end < 0:
                return None
            size = int(bytes(buffer[position:size_end]).split(b";")[0], 16)
            position = size_end + 2 + size + 2
            if len(buffer) < position:
                return None
            if size == 0:
                return position, status
    return body_start, status  # no body (204, 304)


class Generator:
    def __init__(self, *, host: str, port: int, request: bytes, max_connections: int) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.max_connections = max_connections
        self.idle: list[_Connection] = []
        self.waiting: collections.deque[int] = collections.deque()
        self.connections = 0
        self.latencies_ns: list[int] = []
        self.lags_ns: list[int] = []
        self.statuses: collections.Counter[int] = collections.Counter()
        self.errors = 0
        self.outstanding = 0
        self.measure_from_ns = 0
        self.done = asyncio.Event()
        self.sent_all = False

    async def open(self) -> "_Connection":
        loop = asyncio.get_running_loop()
        self.connections += 1
        try:
            _, connection = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            self.connections -= 1
            raise
        return connection

    def dispatch(self, scheduled_ns: int) -> None:
        self.outstanding += 1
        if self.idle:
            self.idle.pop().send(scheduled_ns)
        elif self.connections < self.max_connections:
            asyncio.ensure_future(self._send_on_new(scheduled_ns))
        else:
            self.waiting.append(scheduled_ns)

    async def _send_on_new(self, scheduled_ns: int) -> None:
        try:
            connection = await self.open()
        except OSError:
            self.finished(None, scheduled_ns, scheduled_ns, None)
            return
        connection.send(scheduled_ns)

    def finished(
        self, connection: "_Connection | None", scheduled_ns: int, sent_ns: int, status: int | None
    ) -> None:
        now = time.perf_counter_ns()
        if scheduled_ns >= self.measure_from_ns:
            if status is None:
                self.errors += 1
            else:
                self.statuses[status] += 1
                self.latencies_ns.append(now - scheduled_ns)
                self.lags_ns.append(sent_ns - scheduled_ns)
        self.outstanding -= 1
        if connection is not None and connection.usable:
            if self.waiting:
                connection.send(self.waiting.popleft())
            else:
                self.idle.append(connection)
        elif self.waiting and self.connections < self.max_connections:
            self.outstanding -= 1  # dispatch counts it again
            self.dispatch(self.waiting.popleft())
        if self.sent_all and self.outstanding == 0:
            self.done.set()

    def lost(self, connection: "_Connection") -> None:
        self.connections -= 1
        if connection in self.idle:
            self.idle.remove(connection)


class _Connection(asyncio.Protocol):
    def __init__(self, generator: Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.in_flight: tuple[int, int] | None = None  # (scheduled, sent)
        self.usable = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def send(self, scheduled_ns: int) -> None:
        assert self.transport is not None
        assert self.in_flight is None
        self.in_flight = (scheduled_ns, time.perf_counter_ns())
        self.transport.write(self.generator.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        parsed = response_length(self.buffer)
        if parsed is None or self.in_flight is None:
            return
        length, status = parsed
        del self.buffer[:length]
        scheduled_ns, sent_ns = self.in_flight
        self.in_flight = None
        self.generator.finished(self, scheduled_ns, sent_ns, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.generator.lost(self)
        if self.in_flight is not None:
            scheduled_ns, sent_ns = self.in_flight
            self.in_flight = None
            self.generator.finished(None, scheduled_ns, sent_ns, None)


def build_request(url: str, method: str, headers: list[str], body: bytes) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def generate(
    *,
    url: str,
    rate: float,
    duration: float,
    warmup: float,
    method: str = "GET",
    headers: list[str] | None = None,
    body: bytes = b"",
    max_connections: int = 256,
    warm_connections: int = 8,
    drain_timeout: float = 10.0,
) -> dict[str, Any]:
    host, port, request = build_request(url, method, headers or [], body)
    generator = Generator(host=host, port=port, request=request, max_connections=max_connections)
    for _ in range(warm_connections):
        generator.idle.append(await generator.open())
    loop = asyncio.get_running_loop()
    interval_ns = int(1e9 / rate)
    total = int(rate * (warmup + duration))
    start_ns = time.perf_counter_ns() + 20 * NS_PER_MS
    generator.measure_from_ns = start_ns + int(warmup * 1e9)

    def tick() -> None:
        for index in range(total):
            scheduled = start_ns + index * interval_ns
            delay = scheduled - time.perf_counter_ns()
            if delay > 0:
                time.sleep(delay / 1e9)
            loop.call_soon_threadsafe(generator.dispatch, scheduled)

        def last() -> None:
            generator.sent_all = True
            if generator.outstanding == 0:
                generator.done.set()

        loop.call_soon_threadsafe(last)

    ticker = threading.Thread(target=tick, name="open-loop ticker", daemon=True)
    ticker.start()
    timed_out = 0
    try:
        await asyncio.wait_for(generator.done.wait(), warmup + duration + drain_timeout + 1)
    except TimeoutError:
        timed_out = generator.outstanding
    ticker.join(timeout=1)
    measured = len(generator.latencies_ns)
    ms = [latency / NS_PER_MS for latency in generator.latencies_ns]
    lags = [lag / NS_PER_MS for lag in generator.lags_ns]
    return {
        "url": url,
        "rate": rate,
        "duration": duration,
        "warmup": warmup,
        "completed": measured,
        "errors": generator.errors + timed_out,
        "statuses": {str(status): count for status, count in sorted(generator.statuses.items())},
        "achieved_rate": measured / duration if duration else 0.0,
        "connections_opened": generator.connections,
        "latency_ms": latency_percentiles(ms),
        "lag_ms": latency_percentiles(lags),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds at the same rate, not measured")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--header", action="append", default=[], help="'Name: value', repeatable")
    parser.add_argument("--body", default="", help="request body (sent as is)")
    parser.add_argument("--max-connections", type=int, default=256)
    arguments = parser.parse_args(argv)
    # The ticker thread must get the GIL back quickly when the loop is busy: a long switch interval
    # would show up as generator lag, not as server latency, but it would blur both.
    sys.setswitchinterval(0.0002)
    result = uvloop.run(
        generate(
            url=arguments.url,
            rate=arguments.rate,
            duration=arguments.duration,
            warmup=arguments.warmup,
            method=arguments.method,
            headers=arguments.header,
            body=arguments.body.encode(),
            max_connections=arguments.max_connections,
        )
    )
    sys.stdout.buffer.write(orjson.dumps(result) + b"\n")


if __name__ == "__main__":
    main()
