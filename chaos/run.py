"""A whole chaos run: the system up, the load and the faults together, the drain, the checks, the summary.

1. the six processes and the relays start (devstack/replicated.py); the customers are made
2. for `duration` seconds the load runs (chaos/load.py) while the faults are injected on their
   seeded plan (chaos/faults.py); every fault is undone before the next step
3. the drain: the run waits, with a deadline, until the system has settled (nothing in flight,
   every order decided and its end answered: devstack/invariants.py). Every saga ends by its
   deadline (SAGA_DEADLINE_SECONDS), so the drain's deadline is that plus a margin
4. the history is held against the databases (chaos/check.py), I1 to I4 are checked, and every
   process is stopped with SIGTERM, which it must survive cleanly (exit code 0)
"""

import asyncio
import collections
import dataclasses
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import aiohttp
import orjson

from chaos.check import Anomaly, Decisions, Finding, check_history, decision_times, placed_orders
from chaos.faults import Injector, plan
from chaos.history import Kind, Operation, Outcome
from chaos.load import Clients, Load, make_customers, stock_catalogue
from devstack.invariants import in_flight, is_settled, state_once, violations
from devstack.keys import make_key_pair
from devstack.replicated import PROCESSES, System, running_system
from devstack.servers import Servers
from orders_service.config import OrdersConfig

WORKERS = 16
DRAIN_MARGIN = 60.0  # seconds of drain beyond the saga's deadline


@dataclasses.dataclass(frozen=True)
class Settings:
    duration: float  # seconds of load and faults
    seed: int
    rate: float = 10.0  # turns (an order placed, or one cancelled) per second

    def replay(self) -> str:
        return f"make chaos DURATION={self.duration:g} SEED={self.seed} RATE={self.rate:g}"


class Disruption(Protocol):
    """What strikes the system while the load runs: the seeded faults of a chaos run
    (chaos/faults.py), or a cluster's failure (tests/cluster/)."""

    failed_starts: list[str]  # "process: why", for each start of a process that failed

    async def run(self, duration: float) -> None:
        """Inject, and undo, within the load's `duration` seconds."""

    def counts(self) -> dict[str, int]:
        """What was injected: how many faults of each kind."""


# How a run makes its disruption, once the system is up: from the system, the moment the load
# starts (time.monotonic()) and where to say what happens.
MakeDisruption = Callable[[System, float, Callable[[str], None]], Disruption]


@dataclasses.dataclass(frozen=True)
class Summary:
    settings: Settings
    operations: collections.Counter[tuple[Kind, Outcome]]
    faults: dict[str, int]
    orders: collections.Counter[str]  # by status
    findings: list[Finding]
    violations: list[str]
    still_in_flight: dict[str, int]  # what the drain left (nothing, when it settled)
    dead_letters: int
    decisions: Decisions
    drain_seconds: float
    unclean_exits: dict[str, int]  # process -> exit code on SIGTERM, for those that were not 0
    failed_starts: list[str]  # processes that exited at start and were started again, and why
    history: list[Operation]  # every operation the clients attempted
    replay: str | None  # the command that runs the same faults again, if one can

    def count(self, anomaly: Anomaly) -> int:
        return sum(finding.anomaly is anomaly for finding in self.findings)

    @property
    def lost(self) -> int:
        return self.count(Anomaly.LOST)

    @property
    def doubled(self) -> int:
        return self.count(Anomaly.DOUBLED)

    @property
    def phantom(self) -> int:
        return self.count(Anomaly.PHANTOM)

    @property
    def passed(self) -> bool:
        return not (
            self.findings or self.violations or self.unclean_exits or any(self.still_in_flight.values())
        )

    def lines(self) -> list[str]:
        ops = self.operations
        by_outcome = {outcome: sum(n for (_, o), n in ops.items() if o is outcome) for outcome in Outcome}
        decisions = self.decisions

        def outcomes(kind: Kind | None) -> str:
            counts = by_outcome if kind is None else {o: ops[(kind, o)] for o in Outcome}
            return ", ".join(f"{outcome} {counts[outcome]}" for outcome in Outcome)

        lines = [
            f"seed                 {self.settings.seed}{f' (replay: {self.replay})' if self.replay else ''}",
            f"operations           {sum(ops.values())}: {outcomes(None)}",
            *(f"  {kind:<18} {outcomes(kind)}" for kind in Kind),
            f"faults injected      {sum(self.faults.values())}: "
            + ", ".join(f"{kind} {count}" for kind, count in self.faults.items()),
            f"orders               {sum(self.orders.values())}: "
            + ", ".join(f"{status} {n}" for status, n in sorted(self.orders.items()))
            + f" ({decisions.by_deadline} rejected at their deadline)",
            f"lost                 {self.lost}",
            f"doubled              {self.doubled}",
            f"phantom              {self.phantom}",
            f"invariants I1-I4     {'hold' if not self.violations else f'{len(self.violations)} violations'}",
            f"dead letters         {self.dead_letters}",
            f"time to decide       longest {decisions.longest:.2f} s, median {decisions.median:.3f} s,"
            f" p99 {decisions.p99:.2f} s ({decisions.decided} orders)",
            f"drain                {self.drain_seconds:.1f} s"
            + ("" if not any(self.still_in_flight.values()) else f", never settled: {self.still_in_flight}"),
            "SIGTERM at the end   "
            + (f"unclean: {self.unclean_exits}" if self.unclean_exits else "every process exited cleanly"),
            f"failed starts        {len(self.failed_starts)}"
            + (" (started again; no data at stake, but each is a defect)" if self.failed_starts else ""),
        ]
        details = [f"  failed start: {why}" for why in self.failed_starts[:20]]
        details += [f"  {finding.anomaly}: {finding.detail}" for finding in self.findings[:20]]
        details += [f"  {violation}" for violation in self.violations[:20]]
        return [*lines, *details, f"result               {'PASS' if self.passed else 'FAIL'}"]


def write_history(history: list[Operation], path: Path) -> None:
    """Every operation and its attempts, a JSON object a line, next to the processes' logs."""
    with path.open("wb") as sink:
        for operation in history:
            record = {**dataclasses.asdict(operation), "outcome": operation.outcome}
            sink.write(orjson.dumps(record) + b"\n")


async def chaos_run(
    servers: Servers,
    work_dir: Path,
    settings: Settings,
    out: Callable[[str], None] = print,
    *,
    disruption: MakeDisruption | None = None,
    relayed: bool = True,
    drain_timeout: float | None = None,
) -> Summary:
    """A run under the seeded plan's faults, or under `disruption`'s. `relayed`: the "-2"
    processes reach the servers through relays (devstack/replicated.py), whose cuts are among the plan's.
    `drain_timeout`: how long the system is given to settle, by default the saga's deadline and a margin."""
    out(f"chaos run: seed {settings.seed}, {settings.duration:g} s at {settings.rate:g} turns/s")

    def seeded_faults(system: System, started_at: float, out: Callable[[str], None]) -> Disruption:
        return Injector(system, started_at, out, plan(settings.seed, settings.duration))

    make_disruption = disruption or seeded_faults
    # The processes inherit this environment: the deadline they will keep is the one set here.
    deadline = float(
        os.environ.get("SAGA_DEADLINE_SECONDS", OrdersConfig.default_of("SAGA_DEADLINE_SECONDS"))
    )
    # Every saga ends by its deadline, so a drain that takes longer will never settle; a run that
    # expects it not to may wait less.
    drain_timeout = drain_timeout or deadline + DRAIN_MARGIN
    keys = make_key_pair(work_dir)
    lasting = settings.duration + drain_timeout + 600  # and the start, and the check
    async with running_system(servers, keys, work_dir, lasting=lasting, relayed=relayed) as system:
        through = "through relays" if relayed else "as the others"
        out(f"system: {', '.join(PROCESSES)}; the -2 processes {through}; logs in {work_dir}")
        connector = aiohttp.TCPConnector(limit=2 * WORKERS)
        async with aiohttp.ClientSession(connector=connector) as http:
            rng = random.Random(f"{settings.seed}/load")
            # An admin's token, of the stack's own key pair: as an operator-made admin would have.
            admin = keys.admin_headers()
            catalogue = await stock_catalogue(http, system.gateways, rng, admin)
            customers = await make_customers(http, system.gateways, rng, admin)
            started_at = time.monotonic()
            clients = Clients(http, system.gateways, started_at)
            injector = make_disruption(system, started_at, out)
            load = Load(
                clients, customers, catalogue, rng, settings.rate, until=started_at + settings.duration
            )
            # A fault that cannot be undone (a process that does not start again) ends the run.
            async with asyncio.TaskGroup() as run:
                run.create_task(load.run(WORKERS))
                run.create_task(injector.run(settings.duration))
        out(f"{time.monotonic() - started_at:7.1f} s  load over, every fault undone; draining")
        drain_started = time.monotonic()
        state, _ = await state_once(system.stack, is_settled, within=drain_timeout, interval=1.0)
        drain_seconds = time.monotonic() - drain_started
        orders = await placed_orders(system.stack.admin_dsn("orders_service"))
        findings = check_history(clients.history, orders, state)
        write_history(clients.history, work_dir / "history.jsonl")
        exits = await system.stack.stop_all()
    summary = Summary(
        settings=settings,
        operations=collections.Counter((operation.kind, operation.outcome) for operation in clients.history),
        faults=injector.counts(),
        orders=collections.Counter(order["status"] for order in state.orders),
        findings=findings,
        violations=violations(state),
        still_in_flight=in_flight(state),
        dead_letters=sum(state.dead_letters.values()),
        decisions=decision_times(state),
        drain_seconds=drain_seconds,
        unclean_exits={name: code for name, code in exits.items() if code != 0},
        failed_starts=injector.failed_starts,
        history=clients.history,
        replay=settings.replay() if disruption is None else None,
    )
    for line in summary.lines():
        out(line)
    return summary
