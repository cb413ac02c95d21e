"""Two replicas of each service and two gateways, on given servers: what the chaos run (chaos/) and
the clusters' failure tests (tests/cluster/) put under load, and what `make cluster-up` runs.

    gateway   ──▶ users_service,   orders_service      ──▶ Postgres, RabbitMQ directly
    gateway-2 ──▶ users_service-2, orders_service-2    ──▶ Postgres, RabbitMQ through relays
                                                           (gateway-2's Postgres too)

A gateway has one URL per upstream, so each is paired with one replica of each service (as in
tests/e2e/test_replicas.py); the clients know both gateways and fail over between them. The
replicas of a service compete for its one queue and its one outbox. For the chaos run, the "-2"
processes reach their servers through TCP relays (devstack/relay.py), so that a fault can cut every
connection they have at once, as a broken network link or a load balancer's reset would.
"""

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

from devstack.keys import KeyPair
from devstack.relay import TcpRelay, with_port
from devstack.servers import Servers
from devstack.stack import Stack, running_stack

SERVICES = ("users_service", "orders_service")
PROCESSES = (
    "gateway",
    "gateway-2",
    "users_service",
    "users_service-2",
    "orders_service",
    "orders_service-2",
)
# The run drives its own load, as fast as it chooses: the gateways' per-client limits (all the
# clients are on 127.0.0.1) would otherwise answer 429, which is not what the run is about.
UNLIMITED = {
    "RATE_LIMIT_PER_SECOND": "1000000",
    "RATE_LIMIT_BURST": "1000000",
    "LOGIN_RATE_LIMIT_PER_MINUTE": "1000000",
    "REGISTRATION_RATE_LIMIT_PER_MINUTE": "1000000",
}


def load_run_settings(lasting: float) -> dict[str, dict[str, str]]:
    """The processes' settings for a run under load of `lasting` seconds at most, checked at its end."""
    # The check reads every event the run caused, and the time each order took from them: none may
    # be pruned by retention before it.
    kept = {"OUTBOX_RETENTION_SECONDS": str(int(lasting)), "INBOX_RETENTION_SECONDS": str(int(lasting))}
    return {
        "gateway": UNLIMITED,
        # The clients sign in once, before the faults begin: their tokens must outlive the run.
        "users_service": {**kept, "JWT_TTL_SECONDS": str(int(lasting))},
        "orders_service": kept,
    }


def replica_2(name: str) -> str:
    return f"{name}-2"


@dataclasses.dataclass
class System:
    servers: Servers
    stack: Stack
    relays: dict[str, TcpRelay]  # "rabbitmq" and "postgres": what the "-2" processes reach them by

    @property
    def gateways(self) -> list[str]:
        return [self.stack.processes[name].url for name in ("gateway", "gateway-2")]


@contextlib.asynccontextmanager
async def running_system(
    servers: Servers, keys: KeyPair, log_dir: Path, *, lasting: float | None, relayed: bool = True
) -> AsyncIterator[System]:
    """The six processes and the two relays, for a run under load of `lasting` seconds at most, or
    with the processes' settings as they ship (None: for trying the system). All are stopped and
    removed on the way out, and need not exit cleanly there: a run stops them itself first, and says
    how they did. Without `relayed`, the "-2" processes reach the servers as the others do (on
    clusters, whose faults are the servers' own: devstack/cluster.py)."""
    relays = (
        {
            "rabbitmq": TcpRelay(servers.rabbitmq.host, servers.rabbitmq.amqp_port),
            "postgres": TcpRelay(servers.postgres.host, servers.postgres.port),
        }
        if relayed
        else {}
    )
    for relay in relays.values():
        await relay.start()
    service_env = {} if lasting is None else load_run_settings(lasting)
    try:
        async with running_stack(servers, keys, log_dir, service_env, require_clean_exit=False) as stack:

            def relayed_url(name: str, variable: str, relay: str) -> str:
                url = stack.env[name][variable]
                return with_port(url, relays[relay].port) if relay in relays else url

            for service in SERVICES:
                await stack.start_replica(
                    service,
                    replica_2(service),
                    RABBITMQ_URL=relayed_url(service, "RABBITMQ_URL", "rabbitmq"),
                    DATABASE_URL=relayed_url(service, "DATABASE_URL", "postgres"),
                )
            await stack.start_replica(
                "gateway",
                replica_2("gateway"),
                USERS_SERVICE_URL=stack.processes[replica_2("users_service")].url,
                ORDERS_SERVICE_URL=stack.processes[replica_2("orders_service")].url,
                DATABASE_URL=relayed_url("gateway", "DATABASE_URL", "postgres"),
            )
            yield System(servers, stack, relays)
    finally:
        for relay in relays.values():
            relay.sever()
            await relay.close()
