"""The faults the tests know, planned at random from a seed and injected into the running system.

Two lanes of faults run side by side, so that faults overlap now and then (a replica restarting
while the broker is away):

    servers    RabbitMQ stopped (stop_app) and started again; Postgres restarted (a fast shutdown),
               or killed (SIGKILL: crash recovery at its start); every connection through a relay
               cut at once
    processes  any of the six processes killed (SIGKILL) and started again, or frozen (SIGSTOP)
               and let go (SIGCONT)

The plan is a pure function of the seed and the duration: the same seed gives the same faults,
with the same targets and lengths, at the same times (`plan`). Within a lane, a fault waits for the
one before it to be over: a recovery (a process's start, RabbitMQ's) takes as long as it takes, and
a fault that slips into the load's last seconds is left out.
Each kind comes up once before any comes up twice (drawn from a shuffled bag), so that even a
short run sees them all. Every fault is undone however the run ends: the servers and processes are
left running.
"""

import asyncio
import collections
import dataclasses
import enum
import random
import time
from collections.abc import Callable

from devstack.replicated import PROCESSES, System


class FaultKind(enum.StrEnum):
    RABBITMQ_STOPPED = "rabbitmq-stop"
    POSTGRES_RESTARTED = "postgres-restart"
    POSTGRES_KILLED = "postgres-kill"
    CONNECTIONS_CUT = "connections-cut"
    PROCESS_KILLED = "process-kill"
    PROCESS_FROZEN = "process-stop"


LANES = {
    "servers": (
        FaultKind.RABBITMQ_STOPPED,
        FaultKind.POSTGRES_RESTARTED,
        FaultKind.POSTGRES_KILLED,
        FaultKind.CONNECTIONS_CUT,
    ),
    "processes": (FaultKind.PROCESS_KILLED, FaultKind.PROCESS_FROZEN),
}
# Seconds a fault lasts (a server or process away, or frozen), and between one and the next in a
# lane: long enough for the system to notice and react (circuits open, consumers reconnect), short
# enough that many faults fit in a run.
HOLD = {
    FaultKind.RABBITMQ_STOPPED: (1.0, 8.0),
    FaultKind.POSTGRES_RESTARTED: (0.0, 0.0),
    FaultKind.POSTGRES_KILLED: (0.0, 3.0),
    FaultKind.CONNECTIONS_CUT: (0.0, 0.0),
    FaultKind.PROCESS_KILLED: (0.5, 5.0),
    FaultKind.PROCESS_FROZEN: (1.0, 8.0),
}
GAP = (2.0, 10.0)
QUIET_END = 5.0  # no fault starts in the last seconds of the load, so that its end is seen working


@dataclasses.dataclass(frozen=True)
class Fault:
    at: float  # seconds into the run, at the earliest
    kind: FaultKind
    target: str  # "rabbitmq", "postgres", a relay ("rabbitmq relay"), or a process's name
    hold: float  # seconds it lasts before it is undone (0: at once)

    def describe(self) -> str:
        match self.kind:
            case FaultKind.RABBITMQ_STOPPED:
                return f"RabbitMQ stopped (stop_app) for {self.hold:.1f} s"
            case FaultKind.POSTGRES_RESTARTED:
                return "Postgres restarted (fast shutdown, start)"
            case FaultKind.POSTGRES_KILLED:
                return f"Postgres killed (SIGKILL), started again after {self.hold:.1f} s"
            case FaultKind.CONNECTIONS_CUT:
                return f"every connection through the {self.target} relay cut"
            case FaultKind.PROCESS_KILLED:
                return f"{self.target} killed (SIGKILL), started again after {self.hold:.1f} s"
            case FaultKind.PROCESS_FROZEN:
                return f"{self.target} frozen (SIGSTOP) for {self.hold:.1f} s, then SIGCONT"


def plan(seed: int, duration: float) -> dict[str, list[Fault]]:
    """Each lane's faults for a run of `duration` seconds, from `seed` alone."""
    return {
        lane: _lane_plan(random.Random(f"{seed}/{lane}"), kinds, duration) for lane, kinds in LANES.items()
    }


def _lane_plan(rng: random.Random, kinds: tuple[FaultKind, ...], duration: float) -> list[Fault]:
    faults: list[Fault] = []
    bag: list[FaultKind] = []
    at = rng.uniform(*GAP)
    while at < duration - QUIET_END:
        if not bag:
            bag = list(kinds)
            rng.shuffle(bag)
        kind = bag.pop()
        hold = round(rng.uniform(*HOLD[kind]), 1)
        faults.append(Fault(round(at, 1), kind, _target(rng, kind), hold))
        at += hold + rng.uniform(*GAP)
    return faults


def _target(rng: random.Random, kind: FaultKind) -> str:
    if kind in (FaultKind.PROCESS_KILLED, FaultKind.PROCESS_FROZEN):
        return rng.choice(PROCESSES)
    if kind is FaultKind.CONNECTIONS_CUT:
        return rng.choice(("rabbitmq", "postgres"))
    return "rabbitmq" if kind is FaultKind.RABBITMQ_STOPPED else "postgres"


START_ATTEMPTS = 5


class Injector:
    """Injects planned faults into a running system and undoes them."""

    def __init__(
        self, system: System, started_at: float, out: Callable[[str], None], planned: dict[str, list[Fault]]
    ) -> None:
        self.system = system
        self.started_at = started_at
        self.out = out
        self.planned = planned
        self.injected: list[Fault] = []
        self.failed_starts: list[str] = []  # "process: why", for each start that failed

    async def run(self, duration: float) -> None:
        """Every lane of the plan, side by side."""
        async with asyncio.TaskGroup() as lanes:
            for lane in self.planned.values():
                lanes.create_task(self.run_lane(lane, duration))

    def counts(self) -> dict[str, int]:
        injected = collections.Counter(fault.kind for fault in self.injected)
        return {kind: injected[kind] for kind in FaultKind}

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    async def run_lane(self, faults: list[Fault], duration: float) -> None:
        """Inject the lane's faults in turn; those that slipped (behind slow recoveries) into the
        load's last seconds are left out, so that every fault strikes a system under load."""
        for fault in faults:
            # The fault's planned time: a wait for a moment, not for a condition.
            await asyncio.sleep(max(0.0, fault.at - self.elapsed()))
            if self.elapsed() > duration - QUIET_END:
                return
            await self.inject(fault)

    async def inject(self, fault: Fault) -> None:
        self.out(f"{self.elapsed():7.1f} s  {fault.describe()}")
        self.injected.append(fault)
        servers, stack = self.system.servers, self.system.stack
        match fault.kind:
            case FaultKind.RABBITMQ_STOPPED:
                await servers.rabbitmq.stop_app()
                try:
                    await asyncio.sleep(fault.hold)
                finally:
                    await servers.rabbitmq.start_app()
            case FaultKind.POSTGRES_RESTARTED:
                await servers.postgres.restart()
            case FaultKind.POSTGRES_KILLED:
                await servers.postgres.kill()
                try:
                    await asyncio.sleep(fault.hold)
                finally:
                    await servers.postgres.start()
            case FaultKind.CONNECTIONS_CUT:
                self.system.relays[fault.target].sever()
            case FaultKind.PROCESS_KILLED:
                await stack.processes[fault.target].kill()
                try:
                    await asyncio.sleep(fault.hold)
                finally:
                    await self.start_again(fault.target)
            case FaultKind.PROCESS_FROZEN:
                stack.processes[fault.target].pause()
                try:
                    await asyncio.sleep(fault.hold)
                finally:
                    stack.processes[fault.target].resume()

    async def start_again(self, name: str) -> None:
        """Start a killed process again, as a supervisor would: if it exits at start (or is never
        ready), it is started once more, and that is told, and counted. It is no loss of data (the
        process never took work), but it is a defect: a service should wait for what it needs."""
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                await self.system.stack.start(name)
                return
            except AssertionError as error:  # devstack's word for "exited at start" or "never ready"
                if attempt == START_ATTEMPTS:
                    raise
                lines = [line for line in str(error).splitlines() if line.strip()]
                why = f"{name}: {lines[-1].strip() if lines else error!r}"
                self.failed_starts.append(why)
                self.out(f"{self.elapsed():7.1f} s  failed start, started again: {why}")
