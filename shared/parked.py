"""Outbox rows that the relay set aside, and putting them back.

    python -m shared.parked list users_service
    python -m shared.parked retry users_service           # every set-aside row
    python -m shared.parked retry users_service --id 42   # just one (the row id `list` shows)

The relay (shared/relay.py) sets a row aside when it can never be published as it is (it cannot be
made into a message), or when the broker has returned or refused it on every one of its attempts
(no queue takes it: a binding is missing). The rows behind it were published meanwhile. Once the
cause is fixed, `retry` puts the row back: the relay publishes it on its next pass, as a first
attempt. Publishing it late is safe: consumers apply each event once, in whatever order it comes.

DATABASE_URL names the service's database, as for the service itself (by default, its `make dev` one).
"""

import argparse
import asyncio
import sys

import asyncpg

from shared.config import DatabaseConfig, config_class_of


async def list_set_aside(dsn: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn)
    try:
        rows: list[asyncpg.Record] = await connection.fetch(
            """
            SELECT id, event_id, event_type, created_at, set_aside_at, attempts, last_error
            FROM outbox WHERE set_aside_at IS NOT NULL AND published_at IS NULL
            ORDER BY id
            """
        )
        return rows
    finally:
        await connection.close()


async def retry_set_aside(dsn: str, row_id: int | None = None) -> list[int]:
    """Put set-aside rows (all, or the one with `row_id`) back for the relay; their ids."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            """
            UPDATE outbox SET set_aside_at = NULL, retry_at = NULL, attempts = 0
            WHERE set_aside_at IS NOT NULL AND published_at IS NULL AND ($1::bigint IS NULL OR id = $1)
            RETURNING id
            """,
            row_id,
        )
        # The relay of every replica looks again at its next poll; nothing needs waking by hand.
        return [row["id"] for row in rows]
    finally:
        await connection.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.parked",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["list", "retry"])
    parser.add_argument("service", help="the service whose outbox to look at, e.g. users_service")
    parser.add_argument("--id", dest="row_id", type=int, help="retry only the row with this id")
    arguments = parser.parse_args(argv)
    try:
        config_class = config_class_of(arguments.service)
    except (ImportError, ValueError) as error:
        parser.error(str(error))
    config = config_class.from_env()
    assert isinstance(config, DatabaseConfig)
    dsn = config.database_url.value
    if arguments.command == "list":
        rows = asyncio.run(list_set_aside(dsn))
        print(f"Found {len(rows)} set-aside outbox row(s) of {arguments.service}")
        for row in rows:
            when = f"{row['set_aside_at']:%Y-%m-%d %H:%M:%S}"
            print(f"  {row['id']:>8}  {row['event_type']:<24} {row['event_id']}  set aside {when}")
            print(f"            after {row['attempts']} attempt(s): {row['last_error']}")
    else:
        retried = asyncio.run(retry_set_aside(dsn, arguments.row_id))
        print(f"Put back {len(retried)} outbox row(s) of {arguments.service} for the relay: {retried}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
