"""Retention: the outbox's published rows and the inbox's rows are deleted once they are old enough,
a bounded batch at a time, by every replica (shared/periodic.py).

- A published outbox row is kept OUTBOX_RETENTION_SECONDS for people debugging a story; the event is
  the broker's, and the relay never looks at it again.
- An inbox row is kept INBOX_RETENTION_SECONDS: an event redelivered within that window is skipped by
  its id. A later one (a dead letter replayed after days, say) is applied again, and changes nothing,
  because every handler decides by the state it finds, not by the event alone (the saga's decisions).

Several replicas may prune at once: each takes rows no other holds (FOR UPDATE SKIP LOCKED), so they
share the work and never wait for each other. Unpublished outbox rows are never pruned.
"""

import datetime

import asyncpg
import structlog

log = structlog.get_logger("retention")

BATCH = 10_000  # rows deleted per statement
BATCHES_PER_RUN = 10  # a run stops there; the next one goes on


# One batch each: the oldest rows no other replica holds. Unpublished outbox rows never match.
_PRUNE_OUTBOX = """
    DELETE FROM outbox WHERE id IN (
        SELECT id FROM outbox WHERE published_at < now() - $1::interval
        LIMIT $2 FOR UPDATE SKIP LOCKED
    )
"""
_PRUNE_INBOX = """
    DELETE FROM inbox WHERE event_id IN (
        SELECT event_id FROM inbox WHERE received_at < now() - $1::interval
        LIMIT $2 FOR UPDATE SKIP LOCKED
    )
"""


async def prune_published_outbox(pool: asyncpg.Pool, keep: datetime.timedelta) -> int:
    """Delete published outbox rows older than `keep`; how many."""
    return await _in_batches(pool, _PRUNE_OUTBOX, keep)


async def prune_inbox(pool: asyncpg.Pool, keep: datetime.timedelta) -> int:
    """Delete inbox rows older than `keep`; how many."""
    return await _in_batches(pool, _PRUNE_INBOX, keep)


async def _in_batches(pool: asyncpg.Pool, delete: str, keep: datetime.timedelta) -> int:
    deleted = 0
    for _ in range(BATCHES_PER_RUN):
        status = await pool.execute(delete, keep, BATCH)
        count = int(status.split()[-1])  # "DELETE n"
        deleted += count
        if count < BATCH:
            break
    return deleted


async def prune_old_rows(
    pool: asyncpg.Pool, *, outbox_keep: datetime.timedelta, inbox_keep: datetime.timedelta
) -> None:
    """One retention run: both tables, a bounded number of batches each."""
    outbox = await prune_published_outbox(pool, outbox_keep)
    inbox = await prune_inbox(pool, inbox_keep)
    if outbox or inbox:
        log.info("pruned", outbox_rows=outbox, inbox_rows=inbox)
