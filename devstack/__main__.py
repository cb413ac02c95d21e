"""A throwaway system: servers of its own, the processes, and nothing left behind.

    python -m devstack up            start it, print where it is, run until Ctrl-C, then remove it all
    python -m devstack demo          start it, run `make demo`'s tour against it, then remove it all
    python -m devstack cluster-up    start the engines as clusters (devstack/cluster.py) and the system
                                     on them, two replicas of each process, in the background
    python -m devstack cluster-down  stop what cluster-up started, and remove it all

`up` and `demo` use the servers the tests would (DEVSTACK_SERVERS, see devstack/servers.py), the
clusters this machine's binaries; never the ones `make dev` uses: a way to try the system, or the
demo, on a machine whose own Postgres and RabbitMQ hold other things.
"""

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson

from devstack.cluster import started_clusters
from devstack.keys import make_key_pair
from devstack.replicated import running_system
from devstack.servers import NoServers, choose, started
from devstack.stack import Stack, running_stack

ROOT = Path(__file__).resolve().parents[1]
# A running cluster-up's state: its supervisor's pid and where everything is; its log beside it.
# DEVSTACK_CLUSTER_DIR puts it elsewhere (the test of cluster-up, beside a cluster of yours).
CLUSTER_DIR = Path(os.environ.get("DEVSTACK_CLUSTER_DIR") or ROOT / ".cluster")
CLUSTER_STATE = CLUSTER_DIR / "state.json"
CLUSTER_UP_DEADLINE = 300.0
CLUSTER_DOWN_DEADLINE = 120.0


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
        await until_asked_to_stop()
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


async def cluster(work_dir: Path) -> int:
    """The clusters and the system on them, until SIGTERM (cluster-down) or Ctrl-C; what cluster-up
    starts in the background. Its state file says it is up, and where everything is."""
    async with started_clusters(tuned_for_tests=False) as clusters:
        print(clusters.describe(), flush=True)
        keys = make_key_pair(work_dir)
        async with running_system(clusters.servers, keys, work_dir, lasting=None, relayed=False) as system:
            rabbitmq, stack = clusters.rabbitmq, system.stack
            operator = stack.broker.operator_url
            nodes = "\n".join(
                f"  {node.node}: AMQP {node.amqp_port}, management http://127.0.0.1:{node.management_port}"
                f" (its folder, with its log: {node.directory})"
                for node in rabbitmq.nodes
            )
            servers = [clusters.postgres.primary, clusters.postgres.standby]
            roles = zip(("primary", "standby"), servers, strict=True)
            postgres = "\n".join(
                f"  {role}: port {server.port} ({server.directory})" for role, server in roles if server
            )
            summary = (
                f"The system is up on the clusters: gateways {', '.join(system.gateways)}"
                f" (the flow page: {system.gateways[0]}/flow)\n"
                f"RabbitMQ, three nodes behind HAProxy on 127.0.0.1:{rabbitmq.amqp_port}"
                f" (management: http://127.0.0.1:{rabbitmq.management_port}, guest/guest):\n{nodes}\n"
                f"Postgres, a primary and a synchronous standby; the services' DSN names both:\n{postgres}\n"
                f"  users_service's: {users_database_url(stack)}\n"
                f"The broker, as the operator: {operator}\n"
                f"The processes' logs: {work_dir}\n\n"
                f"Try: make demo DEMO_ARGS='--gateway-url {system.gateways[0]} --rabbitmq-url {operator} "
                f"--users-database-url {users_database_url(stack)}'\n"
                "make cluster-down stops it all and removes it."
            )
            print(summary, flush=True)
            CLUSTER_STATE.write_text(orjson.dumps({"pid": os.getpid(), "summary": summary}).decode())
            await until_asked_to_stop()
    return 0


async def until_asked_to_stop() -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(number, stopping.set)
    await stopping.wait()
    print("\nstopping...", flush=True)


def running_cluster() -> int | None:
    """The pid of the cluster-up that runs, if one does."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        pid = int(orjson.loads(CLUSTER_STATE.read_bytes())["pid"])
        os.kill(pid, 0)
        return pid
    return None


def cluster_up() -> int:
    if running_cluster():
        print(orjson.loads(CLUSTER_STATE.read_bytes())["summary"])
        return 0
    CLUSTER_DIR.mkdir(exist_ok=True)
    CLUSTER_STATE.unlink(missing_ok=True)
    log = CLUSTER_DIR / "cluster.log"
    print(f"starting the clusters and the system in the background (its log: {log})...", flush=True)
    with log.open("wb") as sink:
        # A session of its own: it outlives this command and the terminal's Ctrl-C.
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "devstack", "cluster"],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + CLUSTER_UP_DEADLINE
    while not CLUSTER_STATE.exists():
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.terminate()
            tail = log.read_text()[-4000:]
            print(f"the cluster did not start; the end of its log:\n{tail}", file=sys.stderr)
            return 1
        time.sleep(0.5)  # a command-line wait on another process's file, polled with a deadline
    print(orjson.loads(CLUSTER_STATE.read_bytes())["summary"])
    return 0


def cluster_down() -> int:
    pid = running_cluster()
    if pid is None:
        print("no cluster is up")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + CLUSTER_DOWN_DEADLINE
    while running_cluster() == pid:
        if time.monotonic() > deadline:
            print(f"the cluster (pid {pid}) did not stop within {CLUSTER_DOWN_DEADLINE:g} s", file=sys.stderr)
            return 1
        time.sleep(0.5)
    CLUSTER_STATE.unlink(missing_ok=True)
    print("the cluster and the system on it are stopped and removed")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "demo", "cluster-up", "cluster-down", "cluster"])
    arguments = parser.parse_args(argv)
    if arguments.command == "cluster-up":
        return cluster_up()
    if arguments.command == "cluster-down":
        return cluster_down()
    run = {"up": up, "demo": demo, "cluster": cluster}[arguments.command]
    with tempfile.TemporaryDirectory(prefix="eda-devstack-") as work:
        try:
            return asyncio.run(run(Path(work)))
        except NoServers as reason:
            print(f"python -m devstack: {reason}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
