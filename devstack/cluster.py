"""The engines as clusters, on one machine: three RabbitMQ nodes behind HAProxy, and a Postgres primary
with a streaming standby, from this machine's binaries, on ports of their own, beside (never instead
of) the machine's own servers.

    clients ──▶ HAProxy ──▶ rabbit a, b, c   one cluster; every quorum queue has a member on each
    clients ──▶ postgresql://…@primary,standby/db?target_session_attrs=read-write

They have the same interfaces as a single server (devstack/postgres.py, devstack/rabbitmq.py), so a
stack runs on them unchanged, and their own faults besides: a node killed, stopped or cut off from its
peers, a primary killed and its standby promoted, a standby that lags.

**Partition handling: pause_minority.** A node that can see only a minority of the cluster (itself,
of three) stops serving: it closes its clients' connections, so that HAProxy's check fails and they
come back through a node of the majority. Quorum queues need no help to stay consistent (Raft commits
only what a majority has), but the rest of what a node holds (exchanges, bindings, users, in Mnesia
on RabbitMQ 3) does; with `autoheal` both sides would go on, and the losers' changes would be thrown
away when they meet again, and `ignore` is for networks that never split. With three nodes, a
majority survives any one node's loss, which is why a cluster has an odd number of them.
"""

import asyncio
import collections
import contextlib
import dataclasses
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from devstack.local import (
    ProcessGroup,
    as_account,
    find_binary,
    give_to,
    new_instance_dir,
    remove_abandoned_instances,
    run,
)
from devstack.ports import free_port
from devstack.postgres import (
    SHIPPED_SETTINGS,
    TEST_SETTINGS,
    Postgres,
    PrivatePostgres,
    find_postgres_binaries,
)
from devstack.rabbitmq import (
    ClusterMembership,
    PrivateRabbitMQ,
    RabbitMQ,
    Vhost,
    find_rabbitmq_binaries,
    start_port_mapper,
)
from devstack.servers import Choice, NoServers, Servers
from devstack.waiting import eventually

PARTITION_HANDLING = "pause_minority"
# How soon a node that stops answering is taken for gone (Erlang's default is 60 s): short, so that a
# partition is noticed within the tests' time; between processes on one machine, ticks are not lost.
NET_TICKTIME_SECONDS = 8
CLUSTER_READY_DEADLINE = 180.0
# How long a node that paused in a partition is given to start again by itself once it has healed.
PARTITION_RECOVERY_DEADLINE = 30.0
FIREWALL_CHAIN_PREFIX = "eda-cut-"

# The AMQP 0-9-1 protocol header, and the start of the broker's first answer (a method frame on
# channel 0): HAProxy sends traffic only to nodes that speak AMQP, not to ones that merely accept
# connections (a frozen node's kernel still does).
AMQP_HEADER = "414d515000000901"
AMQP_FIRST_FRAME = "010000"


class HaProxy:
    """HAProxy from Debian's package, as a Kubernetes Service would be: one address in front of the
    nodes, which sends each new connection to a node that answers, and cuts the connections of a
    node that stops answering (so that their clients reconnect, through it, to another)."""

    def __init__(self, backends: dict[str, tuple[int, list[int], str]]) -> None:
        """`backends`: name -> (the port clients use, the nodes' ports, how a node is checked:
        "amqp" or "tcp")."""
        self.backends = backends
        self.directory = new_instance_dir("haproxy")
        self.processes = ProcessGroup(self.directory, self.directory / "haproxy.log")

    def configuration(self) -> str:
        lines = [
            "global",
            "    maxconn 4000",
            "defaults",
            "    mode tcp",
            "    timeout connect 2s",
            # AMQP connections live for hours; their heartbeats keep them busy.
            "    timeout client 3h",
            "    timeout server 3h",
            "    default-server inter 500ms fall 2 rise 2 on-marked-down shutdown-sessions",
        ]
        for name, (port, node_ports, check) in self.backends.items():
            lines += [f"listen {name}", f"    bind 127.0.0.1:{port}", "    balance roundrobin"]
            if check == "amqp":
                lines += [
                    "    option tcp-check",
                    "    tcp-check connect",
                    f"    tcp-check send-binary {AMQP_HEADER}",
                    f"    tcp-check expect binary {AMQP_FIRST_FRAME}",
                ]
            lines += [f"    server n{n} 127.0.0.1:{port} check" for n, port in enumerate(node_ports)]
        return "\n".join(lines) + "\n"

    async def start(self) -> None:
        binary = find_binary("haproxy", override=None, candidates=["/usr/sbin"])
        if binary is None:
            raise RuntimeError("HAProxy is missing (Debian: apt-get install haproxy)")
        configuration = self.directory / "haproxy.cfg"
        configuration.write_text(self.configuration())
        # -db: in the foreground, in our process group, its warnings (a node going down) in its log.
        await self.processes.start([str(binary), "-db", "-f", str(configuration)], os.environ, self.directory)

    async def close(self) -> None:
        await self.processes.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Firewall:
    """iptables rules of the cluster's own, in a chain of its own that INPUT jumps to: loopback
    traffic passes INPUT too, so a rule there cuts links between processes of this machine."""

    def __init__(self, purpose: str) -> None:
        self.chain = f"{FIREWALL_CHAIN_PREFIX}{os.getpid()}-{purpose}"[:28]  # iptables's longest name
        self.created = False

    @staticmethod
    async def iptables(*arguments: str) -> None:
        binary = find_binary("iptables", override=None, candidates=["/usr/sbin", "/sbin"])
        if binary is None:
            raise RuntimeError("iptables is missing (Debian: apt-get install iptables); a partition needs it")
        await run([str(binary), "-w", *arguments], what=f"iptables {' '.join(arguments)}")

    async def drop(self, rules: Sequence[Sequence[str]]) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("a partition is made with iptables, which needs root")
        if not self.created:
            await remove_abandoned_chains()
            await self.iptables("-N", self.chain)
            await self.iptables("-I", "INPUT", "-j", self.chain)
            self.created = True
        for rule in rules:
            await self.iptables("-A", self.chain, *rule, "-j", "DROP")

    async def clear(self) -> None:
        if self.created:
            await self.iptables("-F", self.chain)

    async def close(self) -> None:
        if self.created:
            await self.iptables("-D", "INPUT", "-j", self.chain)
            await self.iptables("-F", self.chain)
            await self.iptables("-X", self.chain)
            self.created = False


async def remove_abandoned_chains() -> None:
    """Partition rules left by a run that was killed before it could remove them."""
    process = await asyncio.create_subprocess_exec(
        "iptables", "-w", "-S", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    output, _ = await process.communicate()
    chains = re.findall(rf"^-N ({FIREWALL_CHAIN_PREFIX}(\d+)-\S+)$", output.decode(), re.MULTILINE)
    for chain, owner in chains:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(owner), 0)
            continue
        with contextlib.suppress(RuntimeError):
            await Firewall.iptables("-D", "INPUT", "-j", chain)
        await Firewall.iptables("-F", chain)
        await Firewall.iptables("-X", chain)


class RabbitMQCluster(RabbitMQ):
    """Three private nodes in one cluster (`rabbitmqctl join_cluster`), one port mapper, and HAProxy
    in front for AMQP and for the management API: what its clients see is one broker."""

    kind = "private cluster"

    def __init__(self, bin_dir: Path, size: int = 3) -> None:
        super().__init__(amqp_port=free_port(), management_port=free_port(), user="guest", password="guest")
        self.bin_dir = bin_dir
        self.port_mapper_dir = new_instance_dir("epmd")
        membership = ClusterMembership(
            cookie=secrets.token_hex(20),
            epmd_port=free_port(),
            configuration=f"cluster_partition_handling = {PARTITION_HANDLING}\n",
            advanced_configuration=f"[{{kernel, [{{net_ticktime, {NET_TICKTIME_SECONDS}}}]}}].\n",
        )
        self.membership = membership
        self.nodes = [
            PrivateRabbitMQ(bin_dir, cluster=membership, distribution_source=f"127.0.0.{11 + index}")
            for index in range(size)
        ]
        self.port_mapper = ProcessGroup(self.port_mapper_dir, self.port_mapper_dir / "epmd.log")
        self.balancer = HaProxy(
            {
                "amqp": (self.amqp_port, [node.amqp_port for node in self.nodes], "amqp"),
                "management": (self.management_port, [node.management_port for node in self.nodes], "tcp"),
            }
        )
        self.firewall = Firewall("rabbitmq")
        self.formed = False

    def describe(self) -> str:
        nodes = ", ".join(f"{node.node} (AMQP {node.amqp_port})" for node in self.nodes)
        return (
            f"RabbitMQ {self.version or '?'}, a private cluster of {len(self.nodes)} nodes behind HAProxy on "
            f"{self.host}:{self.amqp_port}, partition handling {PARTITION_HANDLING}: {nodes}"
        )

    @contextlib.asynccontextmanager
    async def vhost(self, prefix: str = "test") -> AsyncIterator[Vhost]:
        """A vhost as on one node, with the firehose on every node: tracing is per node, and the
        management API turns it on only on the node that answers, so the flow page would see only
        what was published through that one."""
        async with super().vhost(prefix) as vhost:
            await asyncio.gather(*(node.rabbitmqctl("trace_on", "-p", vhost.name) for node in self.nodes))
            yield vhost

    def node_named(self, name: str) -> PrivateRabbitMQ:
        return next(node for node in self.nodes if node.node == name)

    async def start(self) -> None:
        if not self.port_mapper.running:
            await start_port_mapper(self.port_mapper, self.bin_dir, self.membership.epmd_port)
        if self.formed:
            # Together: a node that was stopped waits for the peers it last saw before it serves.
            await asyncio.gather(*(node.start() for node in self.nodes if not node.processes.running))
        else:
            await self._form()
        if not self.balancer.processes.running:
            await self.balancer.start()
        await self.wait_ready(CLUSTER_READY_DEADLINE)
        await self.wait_all_running()

    async def _form(self) -> None:
        """The first node, then the others joining it, each as an operator would join a new node."""
        first, *others = self.nodes
        await asyncio.gather(*(node.start() for node in self.nodes))
        for node in others:
            await node.rabbitmqctl("stop_app")
            await node.rabbitmqctl("join_cluster", first.node)
            await node.rabbitmqctl("start_app")
        self.formed = True

    async def running_nodes(self) -> set[str]:
        """The nodes the cluster says are running, as the management API of any live one tells."""
        nodes: list[dict[str, Any]] = await self.management.request("GET", "nodes")
        return {node["name"] for node in nodes if node.get("running")}

    async def wait_all_running(self, within: float = CLUSTER_READY_DEADLINE) -> None:
        names = {node.node for node in self.nodes}

        async def all_running() -> bool:
            try:
                return await self.running_nodes() == names
            except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError):
                return False

        await eventually(all_running, within=within, interval=0.5, what=f"all of {sorted(names)} running")

    async def queue_leaders(self, vhost: str) -> collections.Counter[str]:
        """How many of the vhost's durable queues each node serves."""
        queues = await self.management.queues(vhost)
        return collections.Counter(filter(None, (served_from(queue) for queue in queues if queue["durable"])))

    async def wait_queues_fully_replicated(self, vhost: str, within: float = CLUSTER_READY_DEADLINE) -> None:
        """Every quorum queue of the vhost has all its members online again (after a node's return)."""
        size = len(self.nodes)

        async def replicated() -> bool:
            try:
                queues = await self.management.queues(vhost)
            except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError):
                return False
            quorum = [queue for queue in queues if queue.get("type") == "quorum"]
            return bool(quorum) and all(len(queue.get("online", [])) == size for queue in quorum)

        what = f"{vhost}'s quorum queues on every node"
        await eventually(replicated, within=within, interval=0.5, what=what)

    async def serving(self, node: PrivateRabbitMQ) -> bool:
        """Whether `node` answers AMQP, as HAProxy's check asks: a paused node (pause_minority) does not."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(node.host, node.amqp_port), 2)
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(bytes.fromhex(AMQP_HEADER))
            first = await asyncio.wait_for(reader.read(len(AMQP_FIRST_FRAME) // 2), 2)
            return first == bytes.fromhex(AMQP_FIRST_FRAME)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()

    async def led_elsewhere(self, vhost: str, node: PrivateRabbitMQ) -> bool:
        """Whether every durable queue of the vhost is served, and none from `node`."""
        try:
            queues = await self.management.queues(vhost)
        except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError):
            return False
        durable = [queue for queue in queues if queue["durable"]]
        return bool(durable) and all(served_from(queue) not in (None, "", node.node) for queue in durable)

    async def wait_served_elsewhere(self, vhost: str, node: PrivateRabbitMQ, *, within: float = 60.0) -> None:
        async def elsewhere() -> bool:
            return await self.led_elsewhere(vhost, node)

        try:
            await eventually(elsewhere, within=within, interval=0.2)
        except AssertionError:
            raise AssertionError(
                f"within {within} s, not every queue of {vhost} was served from another node than"
                f" {node.node}: {await self.queue_states(vhost)}"
            ) from None

    async def queue_states(self, vhost: str) -> list[str]:
        """Each durable queue's node or leader, and its members online: what a failed wait reports."""
        with contextlib.suppress(OSError, RuntimeError, TimeoutError, aiohttp.ClientError):
            queues = await self.management.queues(vhost)
            return [
                f"{queue['name']}: {served_from(queue)}, online {queue.get('online', '?')}"
                for queue in queues
                if queue["durable"]
            ]
        return ["(the management API did not answer)"]

    async def partition(self, node: PrivateRabbitMQ) -> None:
        """Cut `node` off from its peers, and only from them: its clients still reach it, as in a
        real split where the broker's own network fails and the clients' does not."""
        await self.firewall.drop(
            [
                ["-s", node.distribution_source],  # the links it opens
                ["-d", node.distribution_source],  # and what comes back on them
                ["-p", "tcp", "--dport", str(node.distribution_port)],  # the links its peers open
                ["-p", "tcp", "--sport", str(node.distribution_port)],
            ]
        )

    async def heal(self) -> None:
        await self.firewall.clear()

    async def rejoin(self, node: PrivateRabbitMQ, *, within: float = PARTITION_RECOVERY_DEADLINE) -> str:
        """Once a partition has healed: `node`, which paused itself as a minority, starts again by itself
        when it sees the majority. On RabbitMQ 3 its metadata store (Mnesia) sometimes stays split
        after that (rabbitmq-server#17319); RabbitMQ's documented recovery is then to restart the
        nodes of the side that lost, and that is done here. Says which it was."""

        async def whole() -> bool:
            try:
                nodes: list[dict[str, Any]] = await self.management.request("GET", "nodes")
            except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError):
                return False
            split = any(entry.get("partitions") for entry in nodes)
            return not split and all(entry.get("running") for entry in nodes) and await self.serving(node)

        try:
            await eventually(whole, within=within, interval=0.5, what=f"{node.node} back in one cluster")
            return "it started again by itself"
        except AssertionError:
            await node.restart()
            await eventually(whole, within=CLUSTER_READY_DEADLINE, interval=0.5, what=f"{node.node} rejoined")
            return "the cluster stayed split, so it was restarted, as RabbitMQ's docs recover a partition"

    async def rabbitmqctl(self, *arguments: str) -> str:
        running = [node for node in self.nodes if node.processes.running]
        if not running:
            raise RuntimeError("no node of the cluster is running")
        return await running[0].rabbitmqctl(*arguments)

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))

    async def kill(self) -> None:
        await asyncio.gather(*(node.kill() for node in self.nodes))

    async def pause(self) -> None:
        await asyncio.gather(*(node.pause() for node in self.nodes))

    async def resume(self) -> None:
        await asyncio.gather(*(node.resume() for node in self.nodes))

    async def close(self) -> None:
        await self.management.close()
        await self.firewall.close()
        await self.balancer.close()
        await asyncio.gather(*(node.close() for node in self.nodes), return_exceptions=True)
        await self.port_mapper.stop()
        shutil.rmtree(self.port_mapper_dir, ignore_errors=True)


def served_from(queue: dict[str, Any]) -> str | None:
    """The node a queue is served from, as the management API lists it: a quorum queue's leader (which
    its members elect again when it is lost), a classic queue's one node (which it never leaves)."""
    node = queue.get("leader") if queue.get("type") == "quorum" else queue.get("node")
    return str(node) if node else None


class ReplicatedPostgres(Postgres):
    """A primary and a hot standby that streams its WAL (`pg_basebackup -R`), both private instances.

    Its clients get a multi-host DSN with `target_session_attrs=read-write`: they try the hosts in
    turn and keep the one that takes writes, so that after a failover they find the new primary by
    themselves. `synchronous`: a commit returns only once the standby has the WAL on disk
    (`synchronous_standby_names = '*'`); without it, a commit the standby has not yet received is lost
    with a failed primary."""

    kind = "private primary and standby"

    def __init__(self, bin_dir: Path, *, settings: Mapping[str, str], synchronous: bool = True) -> None:
        self.synchronous = synchronous
        primary_settings = {**settings, "synchronous_standby_names": "*" if synchronous else ""}
        self.primary = PrivatePostgres(bin_dir, settings=primary_settings)
        self.standby: PrivatePostgres | None = PrivatePostgres(bin_dir, settings=settings)
        self.servers = [self.primary, self.standby]  # the DSN's hosts, in this order, for good
        self.bin_dir = bin_dir
        self.firewall = Firewall("postgres")
        super().__init__(port=self.primary.port)

    def describe(self) -> str:
        mode = "synchronous" if self.synchronous else "asynchronous"
        return (
            f"PostgreSQL {self.version or '?'}, a private primary on port {self.servers[0].port} and a hot "
            f"standby on port {self.servers[1].port}, {mode} streaming replication"
        )

    def dsn(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        single = super().dsn(database, user=user, password=password)
        hosts = ",".join(f"{self.host}:{server.port}" for server in self.servers)
        return f"{single.replace(f'{self.host}:{self.port}', hosts, 1)}?target_session_attrs=read-write"

    def libpq_target(self) -> dict[str, str]:
        return {
            "PGHOST": ",".join(self.host for _ in self.servers),
            "PGPORT": ",".join(str(server.port) for server in self.servers),
            "PGTARGETSESSIONATTRS": "read-write",
        }

    async def start(self) -> None:
        if not self.primary.data.exists():
            await self.primary.start()
            assert self.standby is not None
            await self._clone(self.standby)
            await self.standby.start()
            await self.wait_streaming()
        else:
            await asyncio.gather(*(server.start() for server in self.servers if server is not None))
        await self.wait_ready()

    async def _clone(self, standby: PrivatePostgres) -> None:
        """The standby's data: a base backup of the primary, with what it needs to follow it (-R)."""
        standby.processes.log.touch()
        give_to(standby.account, standby.directory, standby.processes.log)
        command = [
            str(self.bin_dir / "pg_basebackup"),
            f"--dbname=host={self.host} port={self.primary.port} user={self.superuser}",
            f"--pgdata={standby.data}",
            "--wal-method=stream",
            "--write-recovery-conf",
            "--checkpoint=fast",
            "--no-sync",
        ]
        await run(as_account(standby.account, command), what="pg_basebackup", cwd=standby.directory)

    async def wait_streaming(self, within: float = 60.0) -> None:
        """The standby streams from the primary (and, if synchronous, is the one commits wait for)."""
        wanted = "sync" if self.synchronous else "async"

        async def streaming() -> bool:
            connection = await asyncpg.connect(self.primary.admin_dsn)
            try:
                states = await connection.fetch("SELECT state, sync_state FROM pg_stat_replication")
            finally:
                await connection.close()
            return any(row["state"] == "streaming" and row["sync_state"] == wanted for row in states)

        await eventually(streaming, within=within, interval=0.1, what=f"the standby streaming ({wanted})")

    async def hold_standby(self) -> None:
        """Cut the replication link (iptables), as a slow or broken network would: the standby lags from
        here on. On loopback it is otherwise microseconds behind, and the window a failover loses would
        be too small to see. (Freezing the WAL receiver would not do: what the primary sends meanwhile
        waits in the socket's buffers, and reaches the standby once it is let go.)"""
        assert self.standby is not None
        connection = await asyncpg.connect(self.primary.admin_dsn)
        try:
            receiver_port = await connection.fetchval("SELECT client_port FROM pg_stat_replication LIMIT 1")
        finally:
            await connection.close()
        if receiver_port is None:
            raise RuntimeError("the standby is not streaming from the primary: nothing to hold")
        primary, receiver = str(self.primary.port), str(receiver_port)
        await self.firewall.drop(
            [
                ["-p", "tcp", "--sport", primary, "--dport", receiver],
                ["-p", "tcp", "--sport", receiver, "--dport", primary],
            ]
        )

    async def release_standby(self) -> None:
        await self.firewall.clear()

    async def kill_primary(self) -> None:
        await self.primary.kill()

    async def promote_standby(self) -> None:
        """What a failover manager (CloudNativePG, Patroni) does once the primary is gone: the standby
        becomes the primary. The old primary must never come back as one: it is left dead here."""
        assert self.standby is not None
        await self.release_standby()
        connection = await asyncpg.connect(self.standby.admin_dsn)
        try:
            promoted = await connection.fetchval("SELECT pg_promote(true, 60)")
        finally:
            await connection.close()
        if not promoted:
            raise RuntimeError("the standby was not promoted within 60 s")
        self.primary, self.standby = self.standby, None
        self.port = self.primary.port

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop() for server in self.servers))

    async def kill(self) -> None:
        await asyncio.gather(*(server.kill() for server in self.servers))

    async def pause(self) -> None:
        await asyncio.gather(*(server.pause() for server in self.servers))

    async def resume(self) -> None:
        await asyncio.gather(*(server.resume() for server in self.servers))

    async def close(self) -> None:
        await self.firewall.close()
        await asyncio.gather(*(server.close() for server in self.servers), return_exceptions=True)

    def _psql_path(self) -> str:
        return f"{self.bin_dir}{os.pathsep}{super()._psql_path()}"


@dataclasses.dataclass
class Clusters:
    """Both clusters, and the same as the `Servers` of a run, for the stack that runs on them."""

    postgres: ReplicatedPostgres
    rabbitmq: RabbitMQCluster

    @property
    def servers(self) -> Servers:
        choice = Choice(
            "private",
            "clusters on demand",
            postgres_bin_dir=self.postgres.bin_dir,
            rabbitmq_bin_dir=self.rabbitmq.bin_dir,
        )
        return Servers(choice, self.postgres, self.rabbitmq)

    def describe(self) -> str:
        return f"{self.postgres.describe()}\n{self.rabbitmq.describe()}"


def cluster_binaries(environ: Mapping[str, str] | None = None) -> tuple[Path, Path]:
    """The folders of this machine's Postgres and RabbitMQ servers (DEVSTACK_POSTGRES_BIN_DIR and
    DEVSTACK_RABBITMQ_BIN_DIR, as for private instances)."""
    environ = os.environ if environ is None else environ
    postgres_bin_dir = find_postgres_binaries(environ.get("DEVSTACK_POSTGRES_BIN_DIR"))
    rabbitmq_bin_dir = find_rabbitmq_binaries(environ.get("DEVSTACK_RABBITMQ_BIN_DIR"))
    if postgres_bin_dir is None or rabbitmq_bin_dir is None:
        raise NoServers(
            "a cluster runs this machine's PostgreSQL and RabbitMQ servers, and one is not installed"
            " (Debian: apt-get install postgresql rabbitmq-server haproxy)"
        )
    return postgres_bin_dir, rabbitmq_bin_dir


@contextlib.asynccontextmanager
async def started_rabbitmq_cluster(bin_dir: Path) -> AsyncIterator[RabbitMQCluster]:
    cluster = RabbitMQCluster(bin_dir)
    try:
        await cluster.start()
        yield cluster
    finally:
        await asyncio.shield(cluster.close())


@contextlib.asynccontextmanager
async def started_replicated_postgres(
    bin_dir: Path, *, tuned_for_tests: bool = True, synchronous: bool = True
) -> AsyncIterator[ReplicatedPostgres]:
    """`tuned_for_tests` as in devstack/servers.py: fsync off, which a kill (not a power cut) does not
    notice; the benchmark asks for Postgres as it ships."""
    settings = TEST_SETTINGS if tuned_for_tests else SHIPPED_SETTINGS
    postgres = ReplicatedPostgres(bin_dir, settings=settings, synchronous=synchronous)
    try:
        await postgres.start()
        yield postgres
    finally:
        await asyncio.shield(postgres.close())


@contextlib.asynccontextmanager
async def started_clusters(
    *, tuned_for_tests: bool = True, synchronous: bool = True
) -> AsyncIterator[Clusters]:
    """Both clusters, started together, and whatever happens stopped and removed at the end."""
    postgres_bin_dir, rabbitmq_bin_dir = cluster_binaries()
    remove_abandoned_instances()
    async with contextlib.AsyncExitStack() as started:
        postgres, rabbitmq = await asyncio.gather(
            started.enter_async_context(
                started_replicated_postgres(
                    postgres_bin_dir, tuned_for_tests=tuned_for_tests, synchronous=synchronous
                )
            ),
            started.enter_async_context(started_rabbitmq_cluster(rabbitmq_bin_dir)),
        )
        yield Clusters(postgres, rabbitmq)
