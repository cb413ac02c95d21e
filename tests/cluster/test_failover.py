"""The clustered engines' own failures, each during a burst of orders and cancels through two
gateways (two replicas of every service, devstack/replicated.py without its relays), each ending
with the history held against the databases (chaos/check.py: every accepted order there exactly
once, nothing lost, doubled or phantom) and I1 to I4 (devstack/invariants.py).

The services reach RabbitMQ through HAProxy and Postgres through a multi-host DSN with
target_session_attrs=read-write (devstack/cluster.py); nothing in them knows about the clusters.

Each test fails when its protection is taken away (shown by hand; docs/scaling.md has the figures):
- the leading node killed: with classic queues instead of quorum ones, the queues it held have no
  leader elsewhere, and nothing they held moves until it returns;
- two nodes down: with the relay's publisher confirms off, events marked published were lost with
  the nodes, and never applied (I4);
- the partition: with `ignore` instead of `pause_minority`, the cut-off node goes on serving its
  clients, and once the partition heals the cluster stays split;
- the Postgres failover: with the primary's address alone in the DSN, no process finds the new
  primary, and no order is accepted after the failover; and with asynchronous replication,
  `test_asynchronous_replication_loses_orders_it_accepted` measures what is lost.
"""

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from chaos.history import Kind, Operation, Outcome
from chaos.run import Disruption, Settings, Summary, chaos_run
from devstack.cluster import (
    Clusters,
    RabbitMQCluster,
    ReplicatedPostgres,
    cluster_binaries,
    started_replicated_postgres,
)
from devstack.rabbitmq import PrivateRabbitMQ
from devstack.replicated import System
from devstack.waiting import eventually

# The load: long enough that a broker's failure strikes a busy system, which goes on taking orders
# while it lasts (the faults' own waits, for leaders and for the cluster to heal, go on after it); a
# database failover's longer, so that orders go on well after the gateways' circuits close again.
LOAD = Settings(duration=20.0, seed=20, rate=10.0)
FAILOVER_LOAD = Settings(duration=30.0, seed=20, rate=10.0)
FAULT_AT = 5.0  # seconds into the load: the system is busy, and has time to recover before the end
# Orders must keep being accepted while a fault lasts: this many, placed while it does, end it.
ORDERS_DURING_FAULT = 20
# Orders that must be accepted after a failover: most of the load's remaining 20 s, less the gateways'
# circuit breakers' pause (CIRCUIT_OPEN_SECONDS) after the requests that the failover cut.
ORDERS_AFTER_FAILOVER = 50
# A standby's lag, in seconds, before the primary fails (ReplicatedPostgres.hold_standby): the window a
# failover loses under asynchronous replication.
STANDBY_LAG = 3.0
# The saga's deadline, shorter than its default (120 s), so that the run's drain, which waits for every
# order's end, stays short: an order the faults delayed past it is rejected, a legitimate end.
SAGA_DEADLINE_SECONDS = "20"


@pytest.fixture(autouse=True)
def short_saga_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGA_DEADLINE_SECONDS", SAGA_DEADLINE_SECONDS)


@pytest.fixture
async def postgres(request: pytest.FixtureRequest) -> AsyncIterator[ReplicatedPostgres]:
    """A primary and a standby of the test's own: synchronous unless the test asks otherwise."""
    synchronous = getattr(request, "param", True)
    postgres_bin_dir, _ = cluster_binaries()
    async with started_replicated_postgres(postgres_bin_dir, synchronous=synchronous) as pair:
        yield pair


class ClusterFault(Disruption):
    """One scripted failure, `at` seconds into the load: its steps are said, and timed, as they happen."""

    def __init__(
        self,
        system: System,
        started_at: float,
        out: Callable[[str], None],
        *,
        name: str,
        script: Callable[["ClusterFault"], Awaitable[None]],
    ) -> None:
        self.system = system
        self.started_at = started_at
        self.out = out
        self.name = name
        self.script = script
        self.moments: dict[str, float] = {}
        self.failed_starts: list[str] = []

    @property
    def vhost(self) -> str:
        return self.system.stack.broker.name

    async def run(self, duration: float) -> None:
        await asyncio.sleep(max(0.0, FAULT_AT - self.elapsed()))  # the fault's planned moment
        await self.script(self)

    def counts(self) -> dict[str, int]:
        return {self.name: int(bool(self.moments))}

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    def mark(self, what: str) -> None:
        self.moments[what] = self.elapsed()
        self.out(f"{self.elapsed():7.1f} s  {what}")

    async def count(self, query: str) -> int:
        connection = await asyncpg.connect(self.system.stack.admin_dsn("orders_service"))
        try:
            return int(await connection.fetchval(query))
        finally:
            await connection.close()

    async def orders_placed(self) -> int:
        return await self.count("SELECT count(*) FROM orders")

    async def until_more_orders(self, since: int, *, within: float = 60.0) -> None:
        """Wait until ORDERS_DURING_FAULT orders more than `since` have been placed: the system goes
        on taking orders."""

        async def placed() -> bool:
            return await self.orders_placed() >= since + ORDERS_DURING_FAULT

        what = f"{ORDERS_DURING_FAULT} more orders placed"
        await eventually(placed, within=within, interval=0.2, what=what)


async def under_load(
    clusters: Clusters,
    tmp_path: Path,
    name: str,
    script: Callable[[ClusterFault], Awaitable[None]],
    *,
    load: Settings = LOAD,
    drain_timeout: float | None = None,
) -> tuple[Summary, ClusterFault]:
    faults: list[ClusterFault] = []

    def make(system: System, started_at: float, out: Callable[[str], None]) -> ClusterFault:
        faults.append(ClusterFault(system, started_at, out, name=name, script=script))
        return faults[0]

    servers = clusters.servers
    summary = await chaos_run(
        servers, tmp_path, load, out=print, disruption=make, relayed=False, drain_timeout=drain_timeout
    )
    return summary, faults[0]


def assert_every_accepted_request_applied_once(summary: Summary, fault: ClusterFault) -> None:
    details = "\n".join(summary.lines())
    assert summary.faults == {fault.name: 1}, details
    # A real burst: orders placed and cancelled on either side of the fault.
    assert summary.operations[(Kind.PLACE, Outcome.OK)] >= 100, details
    assert summary.operations[(Kind.CANCEL, Outcome.OK)] >= 15, details
    # The exact count: each accepted order there once, each accepted cancel applied, nothing more.
    assert summary.lost == summary.doubled == summary.phantom == 0, details
    assert not summary.violations, details
    assert not any(summary.still_in_flight.values()), details
    assert not summary.unclean_exits, details


async def leading_node(rabbitmq: RabbitMQCluster, vhost: str) -> tuple[PrivateRabbitMQ, str]:
    """The node serving most of the vhost's queues, once every queue has its three members online: a
    member that joins late (a cluster formed a moment ago) must not be counted on for a majority."""
    await rabbitmq.wait_queues_fully_replicated(vhost)
    leaders = await rabbitmq.queue_leaders(vhost)
    name, led = leaders.most_common(1)[0]
    return rabbitmq.node_named(name), f"{name}, serving {led} of the {sum(leaders.values())} queues"


async def back_up(rabbitmq: RabbitMQCluster) -> None:
    """Every node running again, started together (each waits for the peers it last saw), also after
    a step that failed: the stack cannot be removed while a quorum queue misses a member, and the
    failure reported must be the step's."""
    await rabbitmq.start()


async def back_together(rabbitmq: RabbitMQCluster, fault: ClusterFault) -> None:
    await rabbitmq.wait_all_running()
    await rabbitmq.wait_queues_fully_replicated(fault.vhost)
    fault.mark("all three nodes running, every quorum queue on all three again")


async def test_the_node_leading_the_quorum_queues_killed(
    healthy_rabbitmq_cluster: RabbitMQCluster, postgres: ReplicatedPostgres, tmp_path: Path
) -> None:
    """The other two take over the queues it led, and orders go on while it is down.

    It comes back before the system must settle. On RabbitMQ 3.10, a publisher's channel opened during
    the election (a relay reconnecting through HAProxy) was now and then nacked on every publish
    until the node returned (2 runs of 5 here). The relay kept those rows and sent them again, so
    nothing was lost, but they waited for the node: a lost node must be replaced, not only survived."""
    rabbitmq = healthy_rabbitmq_cluster

    async def kill_the_leader(fault: ClusterFault) -> None:
        leader, leads = await leading_node(rabbitmq, fault.vhost)
        before = await fault.orders_placed()
        await leader.kill()
        fault.mark(f"SIGKILL to {leads}")
        try:
            await rabbitmq.wait_served_elsewhere(fault.vhost, leader)
            fault.mark("every quorum queue has a new leader on the other two nodes")
            await fault.until_more_orders(before)
            fault.mark(f"{ORDERS_DURING_FAULT} more orders placed with the node down")
        finally:
            await back_up(rabbitmq)
        await back_together(rabbitmq, fault)

    summary, fault = await under_load(
        Clusters(postgres, rabbitmq), tmp_path, "leader-killed", kill_the_leader
    )
    assert_every_accepted_request_applied_once(summary, fault)


async def test_two_nodes_down_the_queues_refuse_and_the_publishers_wait(
    healthy_rabbitmq_cluster: RabbitMQCluster, postgres: ReplicatedPostgres, tmp_path: Path
) -> None:
    rabbitmq = healthy_rabbitmq_cluster
    waiting: list[int] = []

    async def two_down(fault: ClusterFault) -> None:
        leader, leads = await leading_node(rabbitmq, fault.vhost)
        second, last = [node for node in rabbitmq.nodes if node is not leader]
        await leader.kill()
        fault.mark(f"SIGKILL to {leads}")
        try:
            await rabbitmq.wait_served_elsewhere(fault.vhost, leader)
            await second.stop()
            fault.mark(f"{second.node} stopped too: one node of three left")

            async def paused() -> bool:
                return not await rabbitmq.serving(last)

            await eventually(paused, within=60, interval=0.2, what="the last node paused (pause_minority)")
            fault.mark(f"{last.node} paused itself: a minority, it serves no one")
            await fault.until_more_orders(await fault.orders_placed())
            unpublished = "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            waiting.append(await fault.count(unpublished))
            fault.mark(f"{ORDERS_DURING_FAULT} more orders accepted; {waiting[0]} events wait in the outbox")
        finally:
            await back_up(rabbitmq)
        await back_together(rabbitmq, fault)

    summary, fault = await under_load(Clusters(postgres, rabbitmq), tmp_path, "two-nodes-down", two_down)
    # With no quorum the publishers held their events (confirms never came), and sent them after.
    assert waiting, "the fault never reached the point where no broker served"
    assert waiting[0] >= ORDERS_DURING_FAULT, waiting
    assert_every_accepted_request_applied_once(summary, fault)


async def test_a_node_cut_off_from_its_peers_pauses_and_nothing_is_lost(
    healthy_rabbitmq_cluster: RabbitMQCluster, postgres: ReplicatedPostgres, tmp_path: Path, firewall: None
) -> None:
    rabbitmq = healthy_rabbitmq_cluster

    async def partition(fault: ClusterFault) -> None:
        leader, leads = await leading_node(rabbitmq, fault.vhost)
        before = await fault.orders_placed()
        await rabbitmq.partition(leader)
        fault.mark(f"iptables cuts {leads} off from its peers (not from its clients)")
        try:

            async def paused() -> bool:
                return not await rabbitmq.serving(leader)

            await eventually(paused, within=90, interval=0.2, what="the cut-off node paused (pause_minority)")
            fault.mark(f"{leader.node} saw it was a minority and paused: its clients went to the others")
            await rabbitmq.wait_served_elsewhere(fault.vhost, leader)
            fault.mark("every quorum queue has a leader on the majority's side")
            await fault.until_more_orders(before)
            fault.mark(f"{ORDERS_DURING_FAULT} more orders placed since the partition began")
        finally:
            await rabbitmq.heal()
            fault.mark("the partition healed")
        fault.mark(f"{leader.node} back in the cluster: {await rabbitmq.rejoin(leader)}")
        await back_together(rabbitmq, fault)

    summary, fault = await under_load(Clusters(postgres, rabbitmq), tmp_path, "partition", partition)
    assert_every_accepted_request_applied_once(summary, fault)


@dataclasses.dataclass(frozen=True)
class Failover:
    """What a failover cost the clients, from the history."""

    promoted_after: float  # seconds from the primary's death to the standby taking writes
    accepted_after: int  # orders placed after it, which only a client that found the new primary could
    first_accepted_after: float | None  # seconds from its death to the first of them accepted
    delayed: int  # orders accepted only after more than one attempt

    @classmethod
    def of(cls, history: list[Operation], fault: ClusterFault) -> "Failover":
        killed, promoted = fault.moments["primary killed"], fault.moments["standby promoted"]
        placed = [op for op in history if op.kind is Kind.PLACE and op.outcome is Outcome.OK]
        after = [op.finished_at for op in placed if op.started_at >= killed and op.finished_at is not None]
        return cls(
            promoted_after=round(promoted - killed, 2),
            accepted_after=len(after),
            first_accepted_after=round(min(after) - killed, 2) if after else None,
            delayed=sum(len(op.attempts) > 1 for op in placed),
        )


def lose_the_primary_while_the_standby_lags(
    postgres: ReplicatedPostgres,
) -> Callable[[ClusterFault], Awaitable[None]]:
    async def failover(fault: ClusterFault) -> None:
        await postgres.hold_standby()
        fault.mark(f"the replication link cut: the standby lags, for {STANDBY_LAG:g} s")
        await asyncio.sleep(STANDBY_LAG)  # how long the standby lags: the fault's length
        await postgres.kill_primary()
        fault.mark("primary killed")
        await postgres.promote_standby()
        fault.mark("standby promoted")

    return failover


async def failover_under_load(
    postgres: ReplicatedPostgres,
    rabbitmq: RabbitMQCluster,
    tmp_path: Path,
    *,
    drain_timeout: float | None = None,
) -> tuple[Summary, ClusterFault]:
    """The primary lost while its standby lags, under load; then every process must have found the
    new primary by itself (the multi-host DSN), and orders gone on."""
    summary, fault = await under_load(
        Clusters(postgres, rabbitmq),
        tmp_path,
        "postgres-failover",
        lose_the_primary_while_the_standby_lags(postgres),
        load=FAILOVER_LOAD,
        drain_timeout=drain_timeout,
    )
    failover = Failover.of(summary.history, fault)
    print(f"{'synchronous' if postgres.synchronous else 'asynchronous'} replication: {failover}")
    assert failover.accepted_after >= ORDERS_AFTER_FAILOVER, failover
    return summary, fault


async def test_the_primary_killed_and_the_standby_promoted_loses_nothing_with_synchronous_replication(
    healthy_rabbitmq_cluster: RabbitMQCluster, postgres: ReplicatedPostgres, tmp_path: Path, firewall: None
) -> None:
    assert postgres.synchronous
    summary, fault = await failover_under_load(postgres, healthy_rabbitmq_cluster, tmp_path)
    assert_every_accepted_request_applied_once(summary, fault)


@pytest.mark.parametrize("postgres", [False], indirect=True, ids=["asynchronous"])
async def test_asynchronous_replication_loses_orders_it_accepted(
    healthy_rabbitmq_cluster: RabbitMQCluster, postgres: ReplicatedPostgres, tmp_path: Path, firewall: None
) -> None:
    """The same failover without synchronous replication: what the primary had committed and the
    standby had not yet received is gone, though the clients were told 202."""
    assert not postgres.synchronous
    # What the failover lost may never be applied (an event acked in the lost window): the run reports
    # it, and need not wait the whole deadline for it.
    drain_timeout = float(SAGA_DEADLINE_SECONDS) + 10
    summary, _ = await failover_under_load(
        postgres, healthy_rabbitmq_cluster, tmp_path, drain_timeout=drain_timeout
    )
    assert summary.lost > 0, "\n".join(summary.lines())
