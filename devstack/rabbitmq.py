"""A RabbitMQ node for a run of the tests, the benchmark or the demo.

Three kinds, one interface, as for Postgres: a private node from this machine's binaries (a node
name, ports, data folder, Erlang cookie and port mapper of its own), a container, or a broker of yours
that you name explicitly (`DEVSTACK_RABBITMQ_URL`), which is never stopped, killed or paused.

Virtual hosts, users, permissions and policies go through the management plugin's HTTP API (a call
takes a few milliseconds, where `rabbitmqctl` starts an Erlang VM each time, most of a second), and
each vhost is set up by the same code as the system's (shared/broker_setup.py).
"""

import abc
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import aiohttp

from devstack import docker
from devstack.local import ProcessGroup, find_binary, new_instance_dir, run
from devstack.ports import free_port
from devstack.waiting import eventually
from shared import broker_setup
from shared.bus_contract import bus

READY_DEADLINE = 90.0


class ManagementApi(broker_setup.ManagementApi):
    """The management API, with what a run needs besides setting the broker up."""

    async def answers(self) -> bool:
        with contextlib.suppress(aiohttp.ClientError, RuntimeError, TimeoutError):
            await self.request("GET", "overview")
            return True
        return False

    async def add_vhost(self, name: str) -> None:
        await self.request("PUT", f"vhosts/{quote(name, safe='')}")

    async def delete_vhost(self, name: str) -> None:
        await self.request("DELETE", f"vhosts/{quote(name, safe='')}")

    async def set_permissions(
        self, vhost: str, user: str, *, configure: str = ".*", write: str = ".*", read: str = ".*"
    ) -> None:
        body = {"configure": configure, "write": write, "read": read}
        await self.request("PUT", f"permissions/{quote(vhost, safe='')}/{quote(user, safe='')}", body)

    async def queues(self, vhost: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.request("GET", f"queues/{quote(vhost, safe='')}")
        return found


@dataclasses.dataclass(frozen=True)
class Vhost:
    """A virtual host of a run's own, set up as the system's is (its users, permissions and policies,
    shared/broker_setup.py): the URL of its administrator, and each user's."""

    name: str
    admin_url: str

    def url_for(self, user: str) -> str:
        """The URL `user` (a service, or the operator) signs in with, with its development password."""
        return self.url_as(user, DEVELOPMENT_PASSWORDS[user])

    def url_as(self, user: str, password: str) -> str:
        return broker_setup.service_url(self.admin_url, user, password)

    @property
    def operator_url(self) -> str:
        return self.url_for(OPERATOR)


OPERATOR = broker_setup.BrokerSetupConfig.default_of("RABBITMQ_OPERATOR_USER")
DEVELOPMENT_PASSWORDS = {
    **{service: service for service in bus().services},
    OPERATOR: broker_setup.BrokerSetupConfig.default_of("RABBITMQ_OPERATOR_PASSWORD"),
}


@dataclasses.dataclass(frozen=True)
class ClusterMembership:
    """What the private nodes of one cluster share (devstack/cluster.py): the Erlang cookie that lets
    them talk, the port mapper through which they find each other, and their settings."""

    cookie: str
    epmd_port: int
    configuration: str  # rabbitmq.conf lines, added to each node's own
    advanced_configuration: str  # advanced.config: the Erlang terms rabbitmq.conf has no keys for

    @staticmethod
    def erl_arguments(distribution_source: str) -> str:
        """The node's links to its peers start from `distribution_source`, a loopback address of its
        own (Linux answers on all of 127.0.0.0/8): a firewall rule on that address cuts exactly those
        links, and a partition can be made on one machine."""
        address = distribution_source.replace(".", ",")
        return f"-kernel inet_dist_connect_options [{{ip,{{{address}}}}}]"


class RabbitMQ(abc.ABC):
    """A RabbitMQ node: an administrator for virtual hosts and permissions, and its life cycle."""

    kind: ClassVar[str]
    can_inject_faults: ClassVar[bool] = True
    host = "127.0.0.1"

    def __init__(self, *, amqp_port: int, management_port: int, user: str, password: str) -> None:
        self.amqp_port = amqp_port
        self.management_port = management_port
        self.user = user
        self.password = password
        self.version = ""
        self.management = ManagementApi(f"http://{self.host}:{management_port}", user, password)

    def url(self, vhost: str = "/", *, user: str | None = None, password: str | None = None) -> str:
        user = self.user if user is None else user
        password = self.password if password is None else password
        return (
            f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.amqp_port}/"
            f"{quote(vhost, safe='')}"
        )

    @contextlib.asynccontextmanager
    async def vhost(self, prefix: str = "test") -> AsyncIterator[Vhost]:
        """A virtual host of the caller's own, set up as the system's is, deleted afterwards."""
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        await self.management.add_vhost(name)
        try:
            await self.management.set_permissions(name, self.user)
            setup = broker_setup.plan(
                bus(),
                operator=OPERATOR,
                delivery_limit=broker_setup.BrokerSetupConfig.default_of("DELIVERY_LIMIT"),
                broker_major=await self.management.broker_major(),
            )
            await broker_setup.apply(self.management, name, setup, DEVELOPMENT_PASSWORDS, firehose=True)
            yield Vhost(name, self.url(name))
        finally:
            # Shielded: on Ctrl-C or a cancelled test the vhost still goes, its queues with it.
            await asyncio.shield(self.management.delete_vhost(name))

    async def wait_ready(self, deadline: float = READY_DEADLINE) -> None:
        async def answers() -> bool:
            try:
                _, writer = await asyncio.open_connection(self.host, self.amqp_port)
            except OSError:
                return False
            writer.close()
            if not await self.management.answers():
                return False
            overview = await self.management.request("GET", "overview")
            self.version = str(overview.get("rabbitmq_version", ""))
            return True

        await eventually(answers, within=deadline, interval=0.2, what=f"{self.describe()} ready")

    @abc.abstractmethod
    def describe(self) -> str: ...

    @abc.abstractmethod
    async def rabbitmqctl(self, *arguments: str) -> str:
        """Run rabbitmqctl against this node; return what it printed."""

    async def stop_app(self) -> None:
        """The broker stops (every connection is closed and refused) while the node stays up: the
        quickest real "RabbitMQ is down"."""
        await self.rabbitmqctl("stop_app")

    async def start_app(self) -> None:
        await self.rabbitmqctl("start_app")
        await self.wait_ready()

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the node (again), and return once it accepts connections."""

    @abc.abstractmethod
    async def stop(self) -> None: ...

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @abc.abstractmethod
    async def kill(self) -> None:
        """SIGKILL of the whole node: a crash. `start` recovers it from its data."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Freeze the node: connections stay open and nothing answers."""

    @abc.abstractmethod
    async def resume(self) -> None: ...

    async def close(self) -> None:
        """Stop it for good and remove what it kept."""
        await self.management.close()


class PrivateRabbitMQ(RabbitMQ):
    """A private node: `rabbitmq-server` with its own node name, ports, folder and port mapper."""

    kind = "private instance"

    def __init__(
        self,
        bin_dir: Path,
        *,
        cluster: ClusterMembership | None = None,
        distribution_source: str = "127.0.0.1",
    ) -> None:
        super().__init__(amqp_port=free_port(), management_port=free_port(), user="guest", password="guest")
        self.bin_dir = bin_dir
        self.cluster = cluster
        self.distribution_source = distribution_source
        self.directory = new_instance_dir("rabbitmq")
        self.node = f"eda-devstack-{uuid.uuid4().hex[:8]}@localhost"
        # A cluster's nodes find each other through one port mapper, the cluster's; a lone node has its own.
        self.epmd_port = cluster.epmd_port if cluster else free_port()
        self.distribution_port = 0  # chosen at each start
        self.processes = ProcessGroup(self.directory, self.directory / "rabbitmq-server.log")
        self.port_mapper = ProcessGroup(self.directory / "epmd", self.directory / "epmd.log")
        self._write_configuration()

    def describe(self) -> str:
        return (
            f"RabbitMQ {self.version or '?'}, private node {self.node} on {self.host}:{self.amqp_port} "
            f"({self.directory})"
        )

    def _write_configuration(self) -> None:
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {self.host}:{self.amqp_port}\n"
            f"management.tcp.ip = {self.host}\n"
            f"management.tcp.port = {self.management_port}\n"
            "log.console = false\n"
            "log.file.level = info\n" + (self.cluster.configuration if self.cluster else "")
        )
        if self.cluster:
            self.advanced_configuration.write_text(self.cluster.advanced_configuration)
        (self.directory / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.directory / "rabbitmq-env.conf").write_text("")  # not the machine's /etc/rabbitmq one
        cookie = self.directory / ".erlang.cookie"
        cookie.write_text(self.cluster.cookie if self.cluster else secrets.token_hex(20))
        cookie.chmod(0o400)
        (self.directory / "epmd").mkdir()

    def _environment(self) -> dict[str, str]:
        """What the node and rabbitmqctl need to be this node and to find it, and nothing of the
        machine's own broker's settings."""
        keep = {key: value for key, value in os.environ.items() if not key.startswith(("RABBITMQ_", "ERL_"))}
        erl_arguments = "-kernel inet_dist_use_interface {127,0,0,1}"
        if self.cluster:
            erl_arguments += f" {self.cluster.erl_arguments(self.distribution_source)}"
        return {
            **keep,
            "HOME": str(self.directory),  # the Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONF_ENV_FILE": str(self.directory / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(self.directory / "plugins-expanded"),
            "RABBITMQ_DIST_PORT": str(self.distribution_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": erl_arguments,
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        } | ({"RABBITMQ_ADVANCED_CONFIG_FILE": str(self.advanced_configuration)} if self.cluster else {})

    @property
    def advanced_configuration(self) -> Path:
        return self.directory / "advanced.config"

    async def start(self) -> None:
        # Free at each start: the last start's port may still be in TIME_WAIT.
        self.distribution_port = free_port()
        if self.cluster is None and not self.port_mapper.running:
            await start_port_mapper(self.port_mapper, self.bin_dir, self.epmd_port)
        await self.processes.start(
            [str(self.bin_dir / "rabbitmq-server")], self._environment(), self.directory
        )
        try:
            await self.wait_ready()
        except AssertionError as error:
            raise RuntimeError(f"{error}\n{self._log_tail()}") from None

    def _log_tail(self) -> str:
        logs = sorted((self.directory / "log").glob("*.log"))
        tail = "\n".join(logs[0].read_text(errors="replace").splitlines()[-30:]) if logs else ""
        return f"{self.processes.log_tail()}\n{tail}"

    async def rabbitmqctl(self, *arguments: str) -> str:
        return await run(
            [str(self.bin_dir / "rabbitmqctl"), "-q", "-n", self.node, *arguments],
            what=f"rabbitmqctl {' '.join(arguments)}",
            cwd=self.directory,
            env=self._environment(),
        )

    async def stop(self) -> None:
        await self.processes.stop(signal.SIGTERM)  # the server script stops the node cleanly on TERM

    async def kill(self) -> None:
        await self.processes.kill()

    async def pause(self) -> None:
        self.processes.pause()

    async def resume(self) -> None:
        self.processes.resume()

    async def close(self) -> None:
        await super().close()
        await self.stop()
        await self.port_mapper.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class ContainerRabbitMQ(RabbitMQ):
    """A container of a RabbitMQ image with the management plugin (official, or a stand-in)."""

    kind = "container"

    def __init__(self, image: str) -> None:
        super().__init__(
            amqp_port=free_port(), management_port=free_port(), user="devstack", password="devstack"
        )
        self.image = image
        self.name = f"eda-devstack-rabbitmq-{uuid.uuid4().hex[:8]}"
        self.created = False

    def describe(self) -> str:
        return (
            f"RabbitMQ {self.version or '?'}, container {self.name} of {self.image} on "
            f"{self.host}:{self.amqp_port}"
        )

    async def start(self) -> None:
        if self.created:
            await docker.docker("start", self.name)
        else:
            await docker.run_container(
                self.image,
                name=self.name,
                # A fixed host name: the node's name, and so its data, survive a restart.
                hostname="devstack-rabbitmq",
                ports={5672: self.amqp_port, 15672: self.management_port},
                environment={"RABBITMQ_DEFAULT_USER": self.user, "RABBITMQ_DEFAULT_PASS": self.password},
            )
            self.created = True
        await self.wait_ready()

    async def rabbitmqctl(self, *arguments: str) -> str:
        return await docker.docker("exec", self.name, "rabbitmqctl", "-q", *arguments)

    async def stop(self) -> None:
        await docker.docker("stop", self.name)

    async def kill(self) -> None:
        await docker.docker("kill", self.name)

    async def pause(self) -> None:
        await docker.docker("pause", self.name)

    async def resume(self) -> None:
        await docker.docker("unpause", self.name)

    async def close(self) -> None:
        await super().close()
        if self.created:
            await docker.remove_container(self.name)


class ExternalRabbitMQ(RabbitMQ):
    """A broker of yours, named by `DEVSTACK_RABBITMQ_URL` (an administrator's URL) and reached for
    virtual hosts through its management API (`DEVSTACK_RABBITMQ_MANAGEMENT_URL`, by default port 15672
    of the same host). The run makes virtual hosts of its own there and deletes them afterwards."""

    kind = "external server"
    can_inject_faults = False

    def __init__(self, url: str, management_url: str | None) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        super().__init__(
            amqp_port=parts.port or 5672,
            management_port=15672,
            user=parts.username or "guest",
            password=parts.password or "guest",
        )
        if management_url:
            self.management = ManagementApi(management_url, self.user, self.password)
            self.management_port = urlsplit(management_url).port or 80

    def describe(self) -> str:
        address = f"{self.host}:{self.amqp_port}"
        return f"RabbitMQ {self.version or '?'}, yours at {address} (DEVSTACK_RABBITMQ_URL)"

    async def start(self) -> None:
        await self.wait_ready(deadline=10)

    async def rabbitmqctl(self, *arguments: str) -> str:
        raise RuntimeError("devstack runs no rabbitmqctl against a broker of yours")

    async def stop(self) -> None:
        raise RuntimeError("devstack never stops a broker of yours")

    async def kill(self) -> None:
        raise RuntimeError("devstack never kills a broker of yours")

    async def pause(self) -> None:
        raise RuntimeError("devstack never pauses a broker of yours")

    async def resume(self) -> None:
        raise RuntimeError("devstack never pauses a broker of yours")


async def start_port_mapper(group: ProcessGroup, bin_dir: Path, port: int) -> None:
    """Erlang's port mapper (epmd) on a port of its own, where nodes register and find each other."""
    epmd = find_binary("epmd", override=None, candidates=[str(bin_dir)])
    if epmd is None:
        raise RuntimeError("Erlang's epmd is missing (Debian: erlang-base, installed with rabbitmq-server)")
    command = [str(epmd), "-port", str(port), "-address", "127.0.0.1"]
    await group.start(command, os.environ, group.directory)


def find_rabbitmq_binaries(override: str | None) -> Path | None:
    """The folder with `rabbitmq-server` and `rabbitmqctl` themselves: DEVSTACK_RABBITMQ_BIN_DIR, else
    Debian's /usr/lib/rabbitmq/bin (its /usr/sbin ones are wrappers that switch to the rabbitmq user),
    else wherever `rabbitmq-server` is on the PATH (Homebrew)."""
    found = find_binary("rabbitmq-server", override=override, candidates=["/usr/lib/rabbitmq/bin"])
    return found.resolve().parent if found else None
