"""A throwaway system: servers of its own, the three processes, and nothing left behind.

    python -m devstack up      start it, print where it is, run until Ctrl-C, then remove it all
    python -m devstack demo    start it, run `make demo`'s tour against it, then remove it all

It uses the servers the tests would (DEVSTACK_SERVERS, see devstack/servers.py), never the ones
`make dev` uses: a way to try the system, or the demo, on a machine whose own Postgres and RabbitMQ
hold other things.
"""

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from devstack.keys import make_key_pair
from devstack.servers import NoServers, choose, started
from devstack.stack import Stack, running_stack


@contextlib.asynccontextmanager
async def throwaway_stack(work_dir: Path) -> AsyncIterator[Stack]:
    choice = await choose()
    print(f"servers: {choice.describe()}", flush=True)
    async with started(choice) as servers:
        print(servers.describe(), flush=True)
        async with running_stack(servers, make_key_pair(work_dir), work_dir) as stack:
            yield stack


async def up(work_dir: Path) -> int:
    async with throwaway_stack(work_dir) as stack:
        operator = stack.broker.operator_url
        users_database = users_database_url(stack)
        print(
            f"\nThe system is up: the gateway on {stack.url} (the flow page: {stack.url}/flow)\n"
            f"The broker, as the operator (the demo's poison message, make dlq): {operator}\n"
            f"users_service's database (python -m users_service.admin, the demo's admin): {users_database}\n"
            f"Logs in {work_dir}\n\n"
            f"Try: make demo DEMO_ARGS='--gateway-url {stack.url} --rabbitmq-url {operator} "
            f"--users-database-url {users_database}'\n"
            "Ctrl-C stops it and removes everything.",
            flush=True,
        )
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stopping.set)
        await stopping.wait()
        print("\nstopping...", flush=True)
    return 0


def users_database_url(stack: Stack) -> str:
    """users_service's database, as the service signs in to it: what the operator's command for roles
    (python -m users_service.admin) uses, and so the demo, to make its admin."""
    return stack.env["users_service"]["DATABASE_URL"]


async def demo(work_dir: Path) -> int:
    async with throwaway_stack(work_dir) as stack:
        tour = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "demo",
            "--gateway-url",
            stack.url,
            "--rabbitmq-url",
            stack.broker.operator_url,
            # users_service's own setting, which the demo hands on to the operator's command.
            env={**os.environ, "DATABASE_URL": users_database_url(stack)},
        )
        return await tour.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "demo"])
    arguments = parser.parse_args(argv)
    run = up if arguments.command == "up" else demo
    with tempfile.TemporaryDirectory(prefix="eda-devstack-") as work:
        try:
            return asyncio.run(run(Path(work)))
        except NoServers as reason:
            print(f"python -m devstack: {reason}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
