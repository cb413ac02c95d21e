"""CPU time of the processes under test, read from their own counters, and pinning them to cores.

Both work on process trees found in /proc: a server's processes come and go (a Postgres backend per
connection), so a tree is walked again each time it is read or pinned, never remembered.
"""

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from bench.machine import CLOCK_TICKS, stat_fields
from devstack import docker
from devstack.servers import Servers

LISTENING = "0A"  # the TCP state of a listening socket in /proc/net/tcp

# Someone's process ids, asked again at each use: a tree grows and shrinks, a service restarts.
Pids = Callable[[], list[int]]
# Seconds of CPU a process (or a group of them) has used so far.
CpuCounter = Callable[[], float]


def process_seconds(pids: Iterable[int]) -> float:
    """utime + stime of processes, every thread of each; a process already gone counts nothing (its
    time is lost to us, which is why only long-lived processes are counted this way)."""
    ticks = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat_fields(pid)
            ticks += int(fields[11]) + int(fields[12])
    return ticks / CLOCK_TICKS


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                parents[int(entry.name)] = int(stat_fields(entry.name)[1])
    return parents


def tree(root: int) -> list[int]:
    """A process and all its living descendants."""
    parents = _parents()
    if root not in parents:
        return []
    inside = [root]
    seen = {root}
    for pid in inside:  # grows while walked: breadth first
        for child, parent in parents.items():
            if parent == pid and child not in seen:
                seen.add(child)
                inside.append(child)
    return inside


def tree_seconds(root: int) -> float:
    """CPU time of a process and its descendants, living or reaped (a Postgres backend that ended
    meanwhile: its time is in the postmaster's cutime and cstime)."""
    ticks = 0
    for pid in tree(root):
        with contextlib.suppress(OSError, ValueError, IndexError):
            ticks += sum(int(value) for value in stat_fields(pid)[11:15])
    return ticks / CLOCK_TICKS


def seconds_of(pids: Pids) -> CpuCounter:
    """A counter of the processes `pids` names at each reading."""

    def counter() -> float:
        return process_seconds(pids())

    return counter


def own_seconds() -> float:
    """This process's own CPU time, without its children (the services and servers it started)."""
    times = os.times()
    return times.user + times.system


def read(counters: Mapping[str, CpuCounter]) -> dict[str, float]:
    return {name: counter() for name, counter in counters.items()}


def used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in before}


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def listening_pid(port: int) -> int | None:
    """The process holding the TCP socket that listens on `port` (any address), if it is ours to see."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if (
                    len(fields) > 9
                    and fields[3] == LISTENING
                    and int(fields[1].rsplit(":", 1)[1], 16) == port
                ):
                    inodes.add(fields[9])
    if not inodes:
        return None
    wanted = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for descriptor in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(descriptor) in wanted:
                        return int(entry.name)
    return None


async def _container_pid(name: str) -> int | None:
    """A container's first process as this machine numbers it (the server, in the images we use)."""
    with contextlib.suppress(docker.DockerError, ValueError):
        pid = int(await docker.docker("inspect", "--format", "{{.State.Pid}}", name))
        return pid or None
    return None


async def server_pids(servers: Servers) -> dict[str, int]:
    """The roots of the servers' process trees: Postgres's postmaster and RabbitMQ's Erlang VM (beam),
    by the socket each listens on; for a container, whose port belongs to Docker's proxy, by
    `docker inspect`. A server we cannot see (elsewhere, or another user's) is left out."""
    found: dict[str, int] = {}
    for name, port, server in (
        ("postgres", servers.postgres.port, servers.postgres),
        ("rabbitmq", servers.rabbitmq.amqp_port, servers.rabbitmq),
    ):
        pid = listening_pid(port)
        container = getattr(server, "name", None)
        if (pid is None or comm(pid).startswith("docker")) and isinstance(container, str):
            pid = await _container_pid(container)
        if pid is not None and name == "rabbitmq":
            # The container's first process may be the start script; the node is its beam.
            pid = next((each for each in tree(pid) if comm(each).startswith("beam")), pid)
        if pid is not None:
            found[name] = pid
    return found


def cpu_jiffies(cpus: Iterable[int]) -> tuple[int, int]:
    """(busy, total) time of some CPUs since boot, in clock ticks, from their lines in /proc/stat."""
    wanted = {f"cpu{cpu}" for cpu in cpus}
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            values = [int(value) for value in fields[1:9]]  # guest time is already inside user time
            total += sum(values)
            busy += sum(values) - values[3] - values[4]  # less idle and iowait
    return busy, total


def threads(pid: int) -> list[int]:
    try:
        return [int(task.name) for task in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def cpu_list(cpus: Iterable[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


@dataclasses.dataclass(frozen=True)
class PinGroup:
    """Processes to hold on `cpus`, every thread of each (as `taskset -a -p -c`)."""

    pids: Pids
    cpus: frozenset[int]


@dataclasses.dataclass
class Pinned:
    """What a pinning did: the processes it held, per group, and those it could not reach."""

    processes: dict[str, int] = dataclasses.field(default_factory=dict)
    failures: list[str] = dataclasses.field(default_factory=list)


def _set_affinity(pid: int, cpus: frozenset[int] | set[int]) -> bool:
    """Every thread of `pid` on `cpus`; False when the process is gone or not ours to move."""
    moved = False
    for thread in threads(pid):
        # A thread may end between the listing and the call: that one needs nothing.
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(thread, cpus)
            moved = True
    return moved


@contextlib.contextmanager
def pinned(groups: Mapping[str, PinGroup]) -> Iterator[Pinned]:
    """Hold each group's processes on its CPUs for the block, then give every process of every group
    back the affinity it had (a process born meanwhile, such as a Postgres backend forked from a
    pinned postmaster, gets its group's first process's), whatever happens in the block."""
    everywhere = frozenset(os.sched_getaffinity(0))
    before: dict[str, dict[int, frozenset[int]]] = {}
    result = Pinned()
    try:
        for name, group in groups.items():
            before[name] = {}
            for pid in group.pids():
                try:
                    before[name][pid] = frozenset(os.sched_getaffinity(pid))
                except OSError as error:
                    result.failures.append(f"{name} {pid}: {error}")
                    continue
                try:
                    _set_affinity(pid, group.cpus)
                except OSError as error:
                    result.failures.append(f"{name} {pid}: {error}")
            result.processes[name] = len(before[name])
        yield result
    finally:
        for name, group in groups.items():
            remembered = before.get(name, {})
            default = next(iter(remembered.values()), everywhere)
            for pid in {*remembered, *group.pids()}:
                with contextlib.suppress(OSError):
                    _set_affinity(pid, remembered.get(pid, default))


def affinity(pid: int) -> frozenset[int]:
    """The CPUs a process may run on (its main thread's), empty once it has gone."""
    try:
        return frozenset(os.sched_getaffinity(pid))
    except OSError:
        return frozenset()
