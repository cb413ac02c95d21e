"""The whole system on given servers, as `make dev` runs it: each service's database and role made by
the same script compose and `make dev` run, a RabbitMQ virtual host of its own, and the three
processes on free ports. Stacks on the same servers never see each other's rows or events."""

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from devstack.keys import KeyPair
from devstack.ports import free_port
from devstack.processes import ROOT, ServiceProcess, service_process
from devstack.rabbitmq import Vhost
from devstack.servers import Servers

CREATE_DATABASES = ROOT / "deploy" / "postgres" / "create-databases.sh"
# In start order: the gateway's readiness asks the two services.
SERVICES = ("users_service", "orders_service", "gateway")
# Each process's database and login role, as create-databases.sh makes them (role = password here:
# a throwaway stack's, on a server of its own or on loopback).
ROLES = {"users_service": "users_svc", "orders_service": "orders_svc", "gateway": "gateway_svc"}
SCRIPT_VARIABLES = {"users_service": "USERS", "orders_service": "ORDERS", "gateway": "GATEWAY"}


@dataclasses.dataclass
class Stack:
    servers: Servers
    keys: KeyPair
    log_dir: Path
    broker: Vhost  # the stack's virtual host, set up as the system's is
    databases: dict[str, str]  # process name -> its database's name
    env: dict[str, dict[str, str]]  # process name -> its environment
    processes: dict[str, ServiceProcess] = dataclasses.field(default_factory=dict)
    replica_of: dict[str, str] = dataclasses.field(default_factory=dict)  # replica name -> service

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def rabbitmq_url(self) -> str:
        """The stack's virtual host, as its administrator (who may look at everything)."""
        return self.broker.admin_url

    @property
    def gateway(self) -> ServiceProcess:
        return self.processes["gateway"]

    @property
    def users(self) -> ServiceProcess:
        return self.processes["users_service"]

    @property
    def orders(self) -> ServiceProcess:
        return self.processes["orders_service"]

    def admin_dsn(self, service: str) -> str:
        """A superuser's connection to a service's database, for checks from outside the system."""
        return self.servers.postgres.dsn(self.databases[service])

    async def start(self, name: str, **env_overrides: str) -> ServiceProcess:
        """Start (or start again) process `name`, its environment updated; wait until it is ready."""
        self.env[name] = {**self.env[name], **env_overrides}
        module = self.replica_of.get(name, name)
        process = service_process(name, module, self.env[name], self.log_dir)
        self.processes[name] = process
        await process.start()
        return process

    async def start_replica(self, service: str, name: str, **env_overrides: str) -> ServiceProcess:
        """One more process of `service` under another name, on a port of its own but with the same
        database and vhost: it competes with the others for the same queues and outbox rows."""
        self.replica_of[name] = service
        self.env[name] = {**self.env[service], "HTTP_PORT": str(free_port())}
        return await self.start(name, **env_overrides)

    async def restart(self, name: str, **env_overrides: str) -> ServiceProcess:
        code = await self.processes[name].stop()
        assert code == 0, f"{name} exited with {code} on SIGTERM"
        return await self.start(name, **env_overrides)

    async def stop_all(self) -> dict[str, int]:
        """SIGTERM to every process, the gateway first; their exit codes."""
        codes = {}
        for name in sorted(self.processes, key=lambda name: name != "gateway"):
            codes[name] = await self.processes[name].stop()
        return codes


async def create_service_databases(servers: Servers) -> dict[str, str]:
    """Each service's database and role, made by the script that `make dev` and compose run, under
    names of this stack's own."""
    suffix = uuid.uuid4().hex[:8]
    names = {service: f"stack_{service.split('_')[0]}_{suffix}" for service in SERVICES}
    variables = {f"{SCRIPT_VARIABLES[service]}_DB_NAME": name for service, name in names.items()}
    await servers.postgres.run_script(CREATE_DATABASES, variables)
    return names


@contextlib.asynccontextmanager
async def running_stack(
    servers: Servers,
    keys: KeyPair,
    log_dir: Path,
    service_env: Mapping[str, Mapping[str, str]] | None = None,
    *,
    require_clean_exit: bool = True,
) -> AsyncIterator[Stack]:
    """Databases, a vhost and the three processes; on exit every process stops (and, by default,
    must have stopped cleanly) and the databases and the vhost are removed."""
    service_env = service_env or {}
    async with servers.rabbitmq.vhost("stack") as broker:
        databases = await create_service_databases(servers)
        try:
            ports = {service: free_port() for service in SERVICES}

            def database_url(service: str) -> str:
                role = ROLES[service]
                return servers.postgres.dsn(databases[service], user=role, password=role)

            # Each process signs in to the broker as its own user (shared/broker_setup.py).
            env = {
                service: {"RABBITMQ_URL": broker.url_for(service), "JWT_PUBLIC_KEY_FILE": str(keys.public)}
                for service in SERVICES
            }
            env["users_service"] |= {
                "HTTP_PORT": str(ports["users_service"]),
                "DATABASE_URL": database_url("users_service"),
                "JWT_PRIVATE_KEY_FILE": str(keys.private),
            }
            env["orders_service"] |= {
                "HTTP_PORT": str(ports["orders_service"]),
                "DATABASE_URL": database_url("orders_service"),
            }
            env["gateway"] |= {
                "HTTP_PORT": str(ports["gateway"]),
                "USERS_SERVICE_URL": f"http://127.0.0.1:{ports['users_service']}",
                "ORDERS_SERVICE_URL": f"http://127.0.0.1:{ports['orders_service']}",
                "DATABASE_URL": database_url("gateway"),
            }
            for service in SERVICES:
                env[service].update(service_env.get(service, {}))
            stack = Stack(servers, keys, log_dir, broker, databases, env)
            exit_codes: dict[str, int] = {}
            try:
                for service in SERVICES:
                    await stack.start(service)
                yield stack
            finally:
                exit_codes = await stack.stop_all()
        finally:
            await servers.postgres.drop_databases(list(databases.values()))
    if require_clean_exit:
        assert set(exit_codes.values()) <= {0}, f"unclean shutdown: {exit_codes}"
