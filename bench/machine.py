"""What the numbers were measured on, and how much memory each process held meanwhile."""

import asyncio
import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg

from devstack.servers import Servers

PAGE_MB = 1024 * 1024


def find_tool(name: str) -> str | None:
    """A program on PATH or in the sbin folders, where Debian puts nginx (not on a user's PATH)."""
    return shutil.which(name) or shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


def _first_line(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"unknown ({error})"
    output = (done.stdout + done.stderr).strip()
    return output.splitlines()[0] if output else "unknown"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_busy_fraction(seconds: float = 1.0) -> float:
    """The share of all CPUs busy over `seconds` (before a run: what else loads the machine)."""

    def sample() -> tuple[int, int]:
        fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    total_before, idle_before = sample()
    time.sleep(seconds)
    total_after, idle_after = sample()
    total = total_after - total_before
    return 1 - (idle_after - idle_before) / total if total else 0.0


async def machine_info(servers: Servers, nginx: str, wrk: str) -> dict[str, Any]:
    connection = await asyncpg.connect(servers.postgres.admin_dsn)
    try:
        postgres = await connection.fetchval("SHOW server_version")
        synchronous_commit = await connection.fetchval("SHOW synchronous_commit")
    finally:
        await connection.close()
    packages = {}
    for package in ("aiohttp", "aio-pika", "asyncpg", "uvloop", "orjson", "structlog"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[package] = metadata.version(package)
    memory_kb = 0
    with contextlib.suppress(OSError, ValueError):
        meminfo = await asyncio.to_thread(Path("/proc/meminfo").read_text)
        memory_kb = int(re.findall(r"MemTotal:\s+(\d+)", meminfo)[0])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "python": sys.version.split()[0],
        "postgres": postgres,
        "postgres_synchronous_commit": synchronous_commit,
        "rabbitmq": servers.rabbitmq.version,
        "servers": servers.choice.describe(),
        "nginx": _first_line([nginx, "-v"]).removeprefix("nginx version: nginx/"),
        "wrk": _first_line([wrk, "-v"]).split(" [")[0].removeprefix("wrk "),
        "packages": packages,
        "load_average_at_start": list(os.getloadavg()),
        "cpu_busy_before_start": round(cpu_busy_fraction(), 3),
    }


def rss_mb(pid: int) -> float:
    """Resident memory of one process in MB (VmRSS), NaN once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / PAGE_MB
    except (OSError, ValueError):
        pass
    return float("nan")


def children(pid: int) -> list[int]:
    """Direct children of a process (nginx's workers under its master)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int | str) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 3 onwards."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine since boot, in clock ticks."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already inside user time
    return total - fields[3] - fields[4], total


def tree_jiffies(root: int) -> int:
    """CPU time of a process and all its descendants, living or already reaped, in clock ticks."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat_fields(entry.name)
            parents[int(entry.name)] = int(fields[1])
            # utime, stime, and cutime, cstime: the children it has reaped (wrk runs, for example).
            times[int(entry.name)] = sum(int(value) for value in fields[11:15])
    inside = {root}
    changed = True
    while changed:
        changed = False
        for pid, parent in parents.items():
            if parent in inside and pid not in inside:
                inside.add(pid)
                changed = True
    return sum(times.get(pid, 0) for pid in inside)


class MemoryWatch:
    """Samples the resident memory of named processes in the background; each phase keeps its peak,
    and how busy the machine was meanwhile: in all, and by this benchmark's own process tree (the
    rest is Postgres, RabbitMQ and whatever else runs on the machine).

    `pids` is asked again at every sample, so a restarted process is followed under its new pid.
    """

    def __init__(self, pids: Callable[[], Mapping[str, list[int]]], interval: float = 0.25) -> None:
        self.pids = pids
        self.interval = interval
        self.peaks: dict[str, dict[str, float]] = {}
        self.cpu: dict[str, dict[str, float]] = {}

    def sample(self) -> dict[str, float]:
        return {name: sum(rss_mb(pid) for pid in pids) for name, pids in self.pids().items()}

    @contextlib.asynccontextmanager
    async def phase(self, name: str) -> AsyncIterator[None]:
        peaks = self.peaks.setdefault(name, {})

        async def watch() -> None:
            while True:
                for process, megabytes in self.sample().items():
                    peaks[process] = max(peaks.get(process, 0.0), megabytes)
                await asyncio.sleep(self.interval)

        busy_before, total_before = machine_jiffies()
        tree_before = tree_jiffies(os.getpid())
        started = time.monotonic()
        task = asyncio.create_task(watch(), name=f"memory watch {name}")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            seconds = time.monotonic() - started
            busy_after, total_after = machine_jiffies()
            tree = tree_jiffies(os.getpid()) - tree_before
            self.cpu[name] = {
                "seconds": round(seconds, 1),
                "machine_busy_cores": round((busy_after - busy_before) / CLOCK_TICKS / seconds, 2),
                "bench_tree_cores": round(tree / CLOCK_TICKS / seconds, 2),
            }
