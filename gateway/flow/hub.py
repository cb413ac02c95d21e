"""Fanning records out to every open page without ever waiting for one: bounded queues per page,
a short memory for pages opened later, and the Server-Sent Events frames they are sent as.

The hub never waits for a page. Each page has a bounded queue: one that reads too slowly loses its
oldest records (and is told how many), so a stalled browser tab neither slows the gateway nor grows
its memory. With no page open, only the recent records are kept, in a small ring buffer (events:
HTTP calls are not recorded then, gateway/flow/recorder.py), so that a page opened later starts with
the recent past.
"""

import asyncio
import collections
import enum
import uuid

import orjson

from gateway.flow.records import FlowRecord

HISTORY = 300  # recent records a newly opened page starts with
SUBSCRIBER_QUEUE = 1000  # records a page may fall behind by before it loses the oldest


class TapState(enum.StrEnum):
    """How the tap on the broker is doing (gateway/flow/tap.py), as each page is told."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


def sse_frame(event: str, data: bytes, record_id: str | None = None) -> bytes:
    """One Server-Sent Event. orjson writes no raw newline, so each payload is one `data:` line."""
    head = b"id: %s\n" % record_id.encode() if record_id is not None else b""
    return head + b"event: %s\ndata: %s\n\n" % (event.encode(), data)


class Subscriber:
    """One open page: the frames it has yet to be sent, at most `capacity`, the oldest lost first."""

    def __init__(self, capacity: int) -> None:
        self._frames: collections.deque[bytes] = collections.deque(maxlen=capacity)
        self._ready = asyncio.Event()
        self._lost = 0  # since the last take
        self.lost_in_all = 0

    @property
    def pending(self) -> int:
        return len(self._frames)

    def offer(self, frame: bytes) -> None:
        if len(self._frames) == self._frames.maxlen:
            self._lost += 1
            self.lost_in_all += 1
        self._frames.append(frame)
        self._ready.set()

    def take(self) -> tuple[list[bytes], int]:
        """The frames waiting, and how many were lost before them."""
        frames, lost = list(self._frames), self._lost
        self._frames.clear()
        self._lost = 0
        self._ready.clear()
        return frames, lost

    async def wait(self, within: float) -> bool:
        """Wait until there is something to send; False if `within` seconds passed first."""
        try:
            async with asyncio.timeout(within):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def wake(self) -> None:
        self._ready.set()


class FlowHub:
    """Fans records out to every open page; keeps the recent ones for pages opened later."""

    def __init__(self) -> None:
        # Record ids are "<epoch>-<n>": a page reconnecting to a restarted gateway (another epoch)
        # gets the new process's recent records, not a guess based on numbers from the old one.
        self._epoch = uuid.uuid4().hex[:8]
        self._sequence = 0
        self._recent: collections.deque[tuple[int, bytes]] = collections.deque(maxlen=HISTORY)
        self._subscribers: set[Subscriber] = set()
        self._tap_state = TapState.CONNECTING
        self.closed = False

    @property
    def watching(self) -> bool:
        return bool(self._subscribers)

    @property
    def subscribers(self) -> frozenset[Subscriber]:
        return frozenset(self._subscribers)

    def publish(self, record: FlowRecord) -> None:
        """Hand `record` to every page, now; never waits."""
        self._sequence += 1
        record_id = f"{self._epoch}-{self._sequence}"
        frame = sse_frame("record", record.to_json(record_id), record_id)
        self._recent.append((self._sequence, frame))
        for subscriber in self._subscribers:
            subscriber.offer(frame)

    def set_tap_state(self, state: TapState) -> None:
        self._tap_state = state
        frame = self._status_frame()
        for subscriber in self._subscribers:
            subscriber.offer(frame)

    def subscribe(self, last_event_id: str = "") -> Subscriber:
        """A new page, given the tap's state and the recent records it has not seen yet."""
        subscriber = Subscriber(SUBSCRIBER_QUEUE)
        subscriber.offer(self._status_frame())
        epoch, _, number = last_event_id.partition("-")
        seen = int(number) if epoch == self._epoch and number.isdigit() else 0
        for sequence, frame in self._recent:
            if sequence > seen:
                subscriber.offer(frame)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def close(self) -> None:
        """The gateway is stopping: every stream ends now, so that none holds up the shutdown."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.wake()

    def _status_frame(self) -> bytes:
        return sse_frame("status", orjson.dumps({"tap": self._tap_state}))
