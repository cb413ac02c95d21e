"""The side-by-side benchmark: one process tree, one machine, one run, every comparison interleaved.

Each measurement is repeated for several rounds, and within a round the things compared run one
after the other (their order rotating from round to round), so that whatever else the machine does
meanwhile falls on all of them alike. What is reported is the median over rounds and its spread.
"""

import asyncio
import contextlib
import dataclasses
import datetime
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import profile, report
from bench.cpu import (
    CpuCounter,
    Pids,
    PinGroup,
    affinity,
    cpu_jiffies,
    cpu_list,
    listening_pid,
    own_seconds,
    pinned,
    process_seconds,
    read,
    seconds_of,
    server_pids,
    tree,
    tree_seconds,
    used,
)
from bench.machine import CLOCK_TICKS, MemoryWatch, cpu_busy_fraction, find_tool, machine_info
from bench.nginx import Nginx, running_nginx
from bench.relay import raw_throughput, relay_throughput
from bench.saga import (
    SAGA_TRANSACTIONS,
    FinalStates,
    RawSaga,
    final_states,
    post_order,
    publish_confirm_latency,
    raw_saga,
    relay_wake_delays,
    saga_latency,
    saga_throughput,
)
from bench.stack import (
    Stack,
    bench_clusters,
    bench_servers,
    bench_stack,
    cheap_gateway,
    databases,
    register_customers,
    stock_the_catalogue,
)
from bench.stats import latency_percentiles, ratio, summarize
from bench.wrk import WrkResult, run_wrk
from devstack.cluster import Clusters, cluster_binaries
from devstack.ports import free_port
from devstack.processes import ServiceProcess
from devstack.servers import NoServers
from devstack.waiting import eventually
from shared.api_versions import CURRENT_PREFIX

PERCENTILES = ("p50", "p99", "p99.9")
R4_SHARE_OF_R3 = 0.25
R2_PINNED_SHARE_OF_R1 = 0.25
# What `--only` may name. R2's rate comes from R1 and R4's from R3, so each brings the other along;
# R3 on the clusters runs in R3's rounds, beside its single-node saga.
SECTIONS = ("r1", "r1-cheap", "r2", "r3", "r3-cluster", "r4", "r5")
NEEDS = {"r2": "r1", "r4": "r3", "r3-cluster": "r3"}
# Left out of a smoke run unless named: the clusters need HAProxy and half a minute to start, which
# `make test`'s smoke run can afford neither of.
NOT_IN_SMOKE = frozenset({"r3-cluster"})
# The processes of the system whose CPU time is counted per order in R3 (the harness apart). HAProxy
# only on the clusters, where it stands in front of the RabbitMQ nodes, taking CPU from the same cores.
SYSTEM = ("gateway", "users_service", "orders_service", "postgres", "rabbitmq", "haproxy")
# The services' tokens outlive the run: a customer signs in once, before the first section.
JWT_TTL_SECONDS = 4 * 3600
# What R3 on the clusters pays for, said in its JSON.
REPLICATION = (
    "Postgres: a primary and a hot standby streaming its WAL synchronously (synchronous_standby_names "
    "'*': a commit returns once the standby has flushed it), both with fsync on, as Postgres ships; "
    "RabbitMQ: three nodes in one cluster, every quorum queue with a member on each (a publish is "
    "confirmed once two of the three have written it), its clients connected through HAProxy"
)


def sections_to_run(only: str | None, *, smoke: bool = False) -> frozenset[str]:
    """The sections `--only` names (comma-separated), with those they need; without it, all of them
    (in a smoke run, all but NOT_IN_SMOKE)."""
    if not only:
        return frozenset(SECTIONS) - (NOT_IN_SMOKE if smoke else frozenset())
    named = {name.strip().lower() for name in only.split(",") if name.strip()}
    unknown = named - set(SECTIONS)
    if unknown or not named:
        raise ValueError(f"--only {only!r}: choose from {', '.join(SECTIONS)}")
    return frozenset(named | {NEEDS[name] for name in named if name in NEEDS})


@dataclasses.dataclass(frozen=True)
class Settings:
    smoke: bool
    rounds: int
    duration: float  # seconds measured per run, in every section
    warmup: float  # seconds of load before each measured run, not counted
    wrk_threads: int
    wrk_connections: int
    wrk_cpus: str | None
    customers: int
    saga_in_flight: int
    saga_posters: int
    raw_workers: int
    relay_events: int
    parts_samples: int
    wake_rate: float
    wake_duration: float
    profile_dir: Path | None
    idle_probe: float  # seconds over which the machine's idle is measured before each round
    wait_quiet: float = 0.0  # seconds to wait, at most, for the machine to be quiet before starting
    sections: frozenset[str] = frozenset(SECTIONS)

    @classmethod
    def for_mode(cls, *, smoke: bool, rounds: int | None, duration: float | None, **extra: Any) -> "Settings":
        if smoke:
            base = cls(
                smoke=True,
                rounds=1,
                duration=1.0,
                warmup=0.3,
                wrk_threads=1,
                wrk_connections=8,
                wrk_cpus=None,
                customers=2,
                saga_in_flight=16,
                saga_posters=4,
                raw_workers=4,
                relay_events=300,
                parts_samples=20,
                wake_rate=10.0,
                wake_duration=1.0,
                profile_dir=None,
                idle_probe=0.2,
            )
        else:
            base = cls(
                smoke=False,
                rounds=5,
                duration=10.0,
                warmup=2.0,
                wrk_threads=1,
                wrk_connections=32,
                wrk_cpus=None,
                customers=20,
                saga_in_flight=200,
                saga_posters=8,
                raw_workers=16,
                relay_events=5000,
                parts_samples=300,
                wake_rate=20.0,
                wake_duration=5.0,
                profile_dir=None,
                idle_probe=1.0,
            )
        changes: dict[str, Any] = {key: value for key, value in extra.items() if value is not None}
        if rounds is not None:
            changes["rounds"] = rounds
        if duration is not None:
            changes["duration"] = duration
        return dataclasses.replace(base, **changes)


def rotated(items: Sequence[str], turn: int) -> list[str]:
    """The same items, starting at another one each round: no target always runs first."""
    shift = turn % len(items)
    return [*items[shift:], *items[:shift]]


def cluster_pids(clusters: Clusters) -> dict[str, list[int]]:
    """The roots of the clusters' process trees, by the sockets they listen on: both postmasters,
    the three nodes' Erlang VMs, and HAProxy in front of them (where a Kubernetes Service would be)."""
    ports = {
        "postgres": [server.port for server in clusters.postgres.servers if server is not None],
        "rabbitmq": [node.amqp_port for node in clusters.rabbitmq.nodes],
        "haproxy": [clusters.rabbitmq.amqp_port],
    }
    found = {name: [listening_pid(port) for port in each] for name, each in ports.items()}
    return {name: [pid for pid in pids if pid is not None] for name, pids in found.items()}


def trees_seconds(roots: Sequence[int]) -> CpuCounter:
    """A counter of the CPU time of several process trees together (an engine's nodes)."""

    def counter() -> float:
        return sum(tree_seconds(root) for root in roots)

    return counter


def _saga_summary(row: dict[str, Any]) -> str:
    total = sum(row["cpu_ms_per_order"].get(name, 0.0) for name in SYSTEM)
    return f"{row['orders_per_second']:.1f} orders/s ({total:.2f} ms of CPU per order)"


def say(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


async def run_openloop(url: str, token: str, rate: float, settings: Settings) -> dict[str, Any]:
    """The open-loop generator in a process of its own: its own GIL and event loop, so that it
    neither slows nor is slowed by the harness."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.openloop",
        "--url",
        url,
        "--rate",
        f"{rate:.1f}",
        "--duration",
        str(settings.duration),
        "--warmup",
        str(settings.warmup),
        "--header",
        f"Authorization: Bearer {token}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bench.openloop failed: {errors.decode()}")
    result: dict[str, Any] = orjson.loads(output)
    return result


@dataclasses.dataclass(frozen=True)
class OnClusters:
    """The system on the clusters: a benchmark of its own, and what its engines are."""

    bench: "Benchmark"
    engines: str


class Benchmark:
    def __init__(
        self,
        settings: Settings,
        stack: Stack,
        nginx: Nginx,
        wrk: str,
        session: aiohttp.ClientSession,
        final: FinalStates,
        work_dir: Path,
        servers: dict[str, list[int]],
    ) -> None:
        self.settings = settings
        self.stack = stack
        self.nginx = nginx
        self.wrk = wrk
        self.session = session
        self.final = final
        self.work_dir = work_dir
        # "postgres" and "rabbitmq" (on the clusters, "haproxy" too): the roots of their process trees
        self.servers = servers
        self.memory = MemoryWatch(self.process_ids)
        self.customers: list[Any] = []
        self.order_path = ""
        self.order_body = b""  # orders_service's answer at order_path, which the cheap upstream serves

    def process_ids(self) -> dict[str, list[int]]:
        found = {
            name: [service.pid]
            for name, service in self.stack.processes.items()
            if service.pid is not None and name not in self.stack.replica_of
        }
        return {**found, "nginx": self.nginx.pids()}

    @property
    def targets(self) -> dict[str, str]:
        return {"direct": self.stack.orders.url, "nginx": self.nginx.url, "gateway": self.stack.gateway.url}

    async def prepare(self) -> None:
        await stock_the_catalogue(self.session, self.stack.orders.url, self.stack.keys)
        self.customers = await register_customers(self.session, self.stack.users.url, self.settings.customers)
        order_id = await post_order(self.session, self.stack.orders.url, self.customers[0])
        if order_id is None:
            raise RuntimeError("could not place the order that R1 and R2 read")
        await eventually(self._final(order_id), within=30, what="the first order reached its final state")
        self.order_path = f"{CURRENT_PREFIX}/orders/{order_id}"
        headers = {"Authorization": f"Bearer {self.customers[0].token}"}
        async with self.session.get(self.stack.orders.url + self.order_path, headers=headers) as response:
            if response.status != 200 or response.content_type != "application/json":
                raise RuntimeError(f"GET {self.order_path}: {response.status} {response.content_type}")
            self.order_body = await response.read()

    def _final(self, order_id: str) -> Any:
        async def probe() -> bool:
            return order_id in self.final.arrived

        return probe

    async def idle_memory(self) -> dict[str, float]:
        samples = []
        for _ in range(5):
            samples.append(self.memory.sample())
            await asyncio.sleep(0.2)
        return {name: statistics.median(sample[name] for sample in samples) for name in samples[0]}

    async def busy_before(self, section: str, turn: int) -> float:
        """How busy the machine is just before a round: what our processes leave idle between rounds
        is whatever else runs on it. Off the event loop, which has connections to keep meanwhile."""
        busy = await asyncio.to_thread(cpu_busy_fraction, self.settings.idle_probe)
        if busy > report.QUIET_BUSY:
            say(f"NOTE: {section} round {turn + 1} starts on a busy machine: {busy:.0%} of the CPUs busy")
        return round(busy, 3)

    # --- R1 ----------------------------------------------------------------------------------------

    async def _wrk(self, url: str, duration: float) -> WrkResult:
        settings = self.settings
        return await run_wrk(
            self.wrk,
            url,
            token=self.customers[0].token,
            script_dir=self.work_dir,
            threads=settings.wrk_threads,
            connections=settings.wrk_connections,
            duration=duration,
            cpus=settings.wrk_cpus,
        )

    async def _throughput_rounds(
        self, section: str, targets: dict[str, str], proxies: dict[str, Pids], *, warm: bool
    ) -> dict[str, Any]:
        """wrk against each target in turn, for every round; around each run, the CPU time the
        proxy's processes (`proxies`) used, by their own counters, per request wrk completed."""
        settings = self.settings
        if warm:  # every path: connections, pools, caches
            for base in targets.values():
                await self._wrk(base + self.order_path, 1)
        rounds: list[dict[str, float]] = []
        cpu_rounds: list[dict[str, dict[str, float]]] = []
        busy: list[float] = []
        for turn in range(settings.rounds):
            busy.append(await self.busy_before(section, turn))
            row: dict[str, float] = {}
            cpu_row: dict[str, dict[str, float]] = {}
            for name in rotated(list(targets), turn):
                pids = proxies.get(name)
                before = process_seconds(pids()) if pids else 0.0
                result = await self._wrk(targets[name] + self.order_path, settings.duration)
                if not result.clean:
                    raise RuntimeError(f"{section} {name}: errors under load:\n{result.output}")
                row[name] = result.requests_per_second
                if pids is not None:
                    seconds = process_seconds(pids()) - before
                    cpu_row[name] = {
                        "cpu_seconds": seconds,
                        "requests": result.requests,
                        "us_per_request": 1e6 * seconds / result.requests,
                    }
            rounds.append(row)
            cpu_rounds.append(cpu_row)
            say(
                f"{section} round {turn + 1}: "
                + ", ".join(f"{k} {v:.0f}/s" for k, v in row.items())
                + "; CPU per request "
                + ", ".join(f"{k} {v['us_per_request']:.0f} us" for k, v in cpu_row.items())
            )
        return {
            "unit": "requests/s",
            "generator": f"wrk -t{settings.wrk_threads} -c{settings.wrk_connections} -d{settings.duration:g}s"
            + (f" (taskset -c {settings.wrk_cpus})" if settings.wrk_cpus else " (not pinned)"),
            "throughput": {name: summarize([row[name] for row in rounds]) for name in targets},
            "ratio_gateway_nginx": summarize([ratio(row["gateway"], row["nginx"]) for row in rounds]),
            "ratio_nginx_direct": summarize([ratio(row["nginx"], row["direct"]) for row in rounds]),
            "cpu_us_per_request": {
                name: summarize([row[name]["us_per_request"] for row in cpu_rounds]) for name in proxies
            },
            "ratio_cpu_gateway_nginx": summarize(
                [
                    ratio(row["gateway"]["us_per_request"], row["nginx"]["us_per_request"])
                    for row in cpu_rounds
                ]
            ),
            "cpu_method": (
                "utime + stime from /proc/<pid>/stat (nginx: master and worker; the gateway: its "
                "process, every thread), read before and after each wrk run, over the requests wrk "
                f"completed; clock ticks of {1000 / CLOCK_TICKS:g} ms"
            ),
            "rounds": rounds,
            "cpu_rounds": cpu_rounds,
            "machine_busy_before_round": busy,
        }

    def _pids_of(self, process: ServiceProcess) -> Pids:
        """The process's pid while it runs: a restarted service is followed under its new one."""

        def pids() -> list[int]:
            return [process.pid] if process.pid is not None else []

        return pids

    async def r1(self) -> dict[str, Any]:
        async with self.memory.phase("R1"):
            result = await self._throughput_rounds(
                "R1",
                self.targets,
                {"nginx": self.nginx.pids, "gateway": self._pids_of(self.stack.gateway)},
                warm=True,
            )
        return {
            "request": f"GET {CURRENT_PREFIX}/orders/{{id}}, authenticated, keep-alive on both hops",
            **result,
        }

    async def r1_cheap(self, nginx_binary: str) -> dict[str, Any]:
        """R1 again with an upstream that costs almost nothing: nginx answering every request with
        the body orders_service gave (so the gateway gets the same bytes it would), behind a second
        nginx proxy and a second gateway, configured as the first ones. What orders_service's own
        CPU took from the proxies on two shared cores is given back to them."""
        async with contextlib.AsyncExitStack() as exits:
            stub = await exits.enter_async_context(
                running_nginx(nginx_binary, self.work_dir / "stub", free_port(), body=self.order_body)
            )
            proxy = await exits.enter_async_context(
                running_nginx(
                    nginx_binary, self.work_dir / "nginx-stub", free_port(), f"127.0.0.1:{stub.port}"
                )
            )
            await eventually(
                self._answers(stub.url), within=20, what=f"the cheap upstream\n{stub.log_text()}"
            )
            await eventually(self._answers(proxy.url), within=20, what=f"nginx to it\n{proxy.log_text()}")
            gateway = await exits.enter_async_context(cheap_gateway(self.stack, stub.url))
            targets = {"direct": stub.url, "nginx": proxy.url, "gateway": gateway.url}
            await self._same_answer_everywhere(targets)
            result = await self._throughput_rounds(
                "R1 cheap upstream",
                targets,
                {"nginx": proxy.pids, "gateway": self._pids_of(gateway)},
                warm=not self.settings.smoke,
            )
        return {
            "request": f"GET {CURRENT_PREFIX}/orders/{{id}}, authenticated, keep-alive on both hops",
            "upstream": (
                f"nginx, one worker, answering every request with orders_service's answer "
                f"({len(self.order_body)} bytes, application/json); a second gateway and nginx proxy to it"
            ),
            **result,
        }

    def _answers(self, base: str) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(f"{base}/healthz") as response:
                    return response.status == 200
            return False

        return probe

    async def _same_answer_everywhere(self, targets: dict[str, str]) -> None:
        """The cheap upstream is a fair stand-in only if the proxies pass its answer on as they do
        orders_service's: the same status and body, through the gateway's token check."""
        headers = {"Authorization": f"Bearer {self.customers[0].token}"}
        for name, base in targets.items():
            async with self.session.get(base + self.order_path, headers=headers) as response:
                body = await response.read()
                if response.status != 200 or body != self.order_body:
                    raise RuntimeError(f"cheap upstream, {name}: {response.status} {body[:200]!r}")

    # --- R2 ----------------------------------------------------------------------------------------

    def pin_groups(self) -> dict[str, PinGroup] | None:
        """The gateway alone on one CPU, and everything else this run uses on the others: both
        services, Postgres and RabbitMQ (their whole trees), nginx, and the harness, whose open-loop
        generator inherits its CPUs. None on a machine with fewer than two CPUs for us."""
        allowed = sorted(os.sched_getaffinity(0))
        if len(allowed) < 2:
            return None
        gateway = self.stack.gateway

        def others() -> list[int]:
            pids = [os.getpid(), *self.nginx.pids()]
            pids += [service.pid for service in (self.stack.users, self.stack.orders) if service.pid]
            for roots in self.servers.values():
                for root in roots:
                    pids += tree(root)
            return pids

        return {
            "gateway": PinGroup(self._pids_of(gateway), frozenset(allowed[-1:])),
            "everything else": PinGroup(others, frozenset(allowed[:-1])),
        }

    async def r2(self, gateway_max: float) -> dict[str, Any]:
        settings = self.settings
        rate = max(10.0, 0.5 * gateway_max)
        # Pinned, everything but the gateway shares one CPU, where R2's rate nearly saturates the
        # direct path alone (orders_service, Postgres and the generator): the comparison would measure
        # that CPU's queue, which the gateway's extra hop tips over. At half that rate it is about
        # half busy, and what the gateway adds is the gateway's.
        pinned_rate = max(10.0, R2_PINNED_SHARE_OF_R1 * gateway_max)
        token = self.customers[0].token
        rounds: list[dict[str, Any]] = []
        pinned_rounds: list[dict[str, Any]] = []
        busy: list[float] = []
        groups = self.pin_groups()
        async with self.memory.phase("R2"):
            for turn in range(settings.rounds):
                busy.append(await self.busy_before("R2", turn))
                # Unpinned first in one round, pinned first in the next: neither always follows a rest.
                for block in rotated(["free", "pinned"], turn):
                    if block == "free":
                        await self._r2_round(turn, rate, token, rounds)
                    elif groups is not None:
                        await self._r2_pinned_round(turn, pinned_rate, token, groups, pinned_rounds)

        def added(rows: list[dict[str, Any]], proxy: str, key: str) -> dict[str, Any]:
            return summarize(
                [row[proxy]["latency_ms"][key] - row["direct"]["latency_ms"][key] for row in rows]
            )

        result: dict[str, Any] = {
            "unit": "ms",
            "rate": rate,
            "rate_basis": "50% of R1's median gateway throughput",
            "generator": "bench.openloop (open loop, latency from each request's scheduled time)",
            "latency": {
                name: {
                    key: summarize([row[name]["latency_ms"][key] for row in rounds]) for key in PERCENTILES
                }
                for name in self.targets
            },
            "gateway_added": {key: added(rounds, "gateway", key) for key in PERCENTILES},
            "nginx_added": {key: added(rounds, "nginx", key) for key in PERCENTILES},
            "generator_lag": {
                key: summarize([max(row[name]["lag_ms"][key] for name in self.targets) for row in rounds])
                for key in PERCENTILES
            },
            "achieved_rate": {
                name: summarize([row[name]["achieved_rate"] for row in rounds]) for name in self.targets
            },
            "rounds": rounds,
            "machine_busy_before_round": busy,
        }
        if groups is None:
            result["pinned"] = {"skipped": "pinning needs two CPUs, one of them for the gateway alone"}
            return result
        pinned_targets = ("direct", "gateway")
        result["pinned"] = {
            "rate": pinned_rate,
            "rate_basis": f"{R2_PINNED_SHARE_OF_R1:.0%} of R1's median gateway throughput",
            "gateway_cpus": cpu_list(groups["gateway"].cpus),
            "other_cpus": cpu_list(groups["everything else"].cpus),
            "what": (
                "the gateway (every thread) alone on its CPU; both services, Postgres and RabbitMQ "
                "(every process of their trees), nginx, the harness and its open-loop generator on the "
                "others; the affinities given back after each pinned run"
            ),
            "latency": {
                name: {
                    key: summarize([row[name]["latency_ms"][key] for row in pinned_rounds])
                    for key in PERCENTILES
                }
                for name in pinned_targets
            },
            "gateway_added": {key: added(pinned_rounds, "gateway", key) for key in PERCENTILES},
            "generator_lag": {
                key: summarize(
                    [max(row[name]["lag_ms"][key] for name in pinned_targets) for row in pinned_rounds]
                )
                for key in PERCENTILES
            },
            "achieved_rate": {
                name: summarize([row[name]["achieved_rate"] for row in pinned_rounds])
                for name in pinned_targets
            },
            "gateway_cpu": {
                key: summarize([row["gateway_cpu"][key] for row in pinned_rounds])
                for key in ("busy", "by_gateway", "by_other_work")
            },
            "gateway_cpu_definition": (
                "share of the gateway's CPU busy during its pinned runs (warm-up included): in all, by "
                "the gateway, and by anything else (work not pinned away: other users', the kernel's)"
            ),
            "rounds": pinned_rounds,
        }
        return result

    def _checked(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        # A connection a proxy closes under a request in flight costs that one request; more than
        # one in a thousand means the rate or the setup is wrong, and the round is void.
        if result["errors"] > result["completed"] / 1000 or set(result["statuses"]) != {"200"}:
            raise RuntimeError(f"R2 {name}: errors: {result}")
        return result

    async def _r2_round(self, turn: int, rate: float, token: str, rounds: list[dict[str, Any]]) -> None:
        row: dict[str, Any] = {}
        for name in rotated(list(self.targets), turn):
            url = self.targets[name] + self.order_path
            row[name] = self._checked(name, await run_openloop(url, token, rate, self.settings))
        rounds.append(row)
        say(
            f"R2 round {turn + 1} at {rate:.0f}/s: "
            + ", ".join(f"{k} p99 {v['latency_ms']['p99']:.2f} ms" for k, v in row.items())
        )

    @staticmethod
    def _cpu_shares(
        cpus: frozenset[int], before: tuple[int, int], gateway_seconds: float
    ) -> dict[str, float]:
        """How busy the gateway's CPU was since `before`: in all, by the gateway, by anything else.
        Pinning holds our processes only: other work on the machine may still take that CPU, and
        what it took stands beside the latency it caused."""
        busy, total = (after - earlier for after, earlier in zip(cpu_jiffies(cpus), before, strict=True))
        if not total:
            return {"busy": math.nan, "by_gateway": math.nan, "by_other_work": math.nan}
        capacity = total / CLOCK_TICKS  # seconds of those CPUs that went by
        share, own = busy / total, gateway_seconds / capacity
        return {"busy": share, "by_gateway": own, "by_other_work": max(0.0, share - own)}

    async def _r2_pinned_round(
        self,
        turn: int,
        rate: float,
        token: str,
        groups: dict[str, PinGroup],
        rounds: list[dict[str, Any]],
    ) -> None:
        row: dict[str, Any] = {}
        gateway, orders = self.stack.gateway.pid, self.stack.orders.pid
        assert gateway is not None
        assert orders is not None
        row["affinity_before"] = {
            "gateway": cpu_list(affinity(gateway)),
            "orders_service": cpu_list(affinity(orders)),
        }
        with pinned(groups) as pinning:
            row["affinity_during"] = {
                "gateway": cpu_list(affinity(gateway)),
                "orders_service": cpu_list(affinity(orders)),
            }
            row["processes_pinned"] = pinning.processes
            row["pin_failures"] = pinning.failures
            for name in rotated(["direct", "gateway"], turn):
                url = self.targets[name] + self.order_path
                busy_before = cpu_jiffies(groups["gateway"].cpus)
                gateway_before = process_seconds([gateway])
                row[name] = self._checked(
                    f"pinned {name}", await run_openloop(url, token, rate, self.settings)
                )
                if name == "gateway":
                    row["gateway_cpu"] = self._cpu_shares(
                        groups["gateway"].cpus, busy_before, process_seconds([gateway]) - gateway_before
                    )
        row["affinity_after"] = {
            "gateway": cpu_list(affinity(gateway)),
            "orders_service": cpu_list(affinity(orders)),
        }
        rounds.append(row)
        say(
            f"R2 pinned round {turn + 1} (gateway on CPU {row['affinity_during']['gateway']}, the rest on "
            f"{row['affinity_during']['orders_service']}): "
            + ", ".join(f"{k} p99 {row[k]['latency_ms']['p99']:.2f} ms" for k in ("direct", "gateway"))
        )

    # --- R3 and R4 ---------------------------------------------------------------------------------

    def cpu_counters(self) -> dict[str, CpuCounter]:
        """Each process's CPU time so far: the three services' own, Postgres's and RabbitMQ's whole
        trees, and the harness's own (the load generator, reported apart from the system)."""
        counters: dict[str, CpuCounter] = {}
        for name in ("gateway", "users_service", "orders_service"):
            counters[name] = seconds_of(self._pids_of(self.stack.processes[name]))
        for name, roots in self.servers.items():
            counters[name] = trees_seconds(roots)
        counters["harness"] = own_seconds
        return counters

    async def saga_round(self) -> dict[str, Any]:
        """One saga round, and the CPU time each process spent on it per order decided in it: all the
        round's orders, warm-up and drain included, since its CPU is counted from start to end."""
        settings = self.settings
        counters = self.cpu_counters()
        before, started = read(counters), time.perf_counter()
        result = await saga_throughput(
            self.session,
            self.stack.orders.url,
            self.customers,
            self.final,
            warmup=settings.warmup,
            duration=settings.duration,
            in_flight=settings.saga_in_flight,
            posters=settings.saga_posters,
            drain_timeout=120,
        )
        spent = used(before, read(counters))
        decided = self.final.count_between(started, time.perf_counter())
        result["decided_in_round"] = decided
        result["cpu_seconds"] = spent
        result["cpu_ms_per_order"] = {
            name: 1000 * seconds / decided if decided else math.nan for name, seconds in spent.items()
        }
        return result

    def _cpu_per_order(self, saga_rounds: list[dict[str, Any]], *, against_reference: bool) -> dict[str, Any]:
        system = [name for name in SYSTEM if all(name in row["cpu_ms_per_order"] for row in saga_rounds)]
        totals = [sum(row["cpu_ms_per_order"][name] for name in system) for row in saga_rounds]
        result = {
            "unit": "ms of CPU per order decided",
            "method": (
                "utime + stime (and, for Postgres, RabbitMQ and HAProxy, every process of their trees, "
                "ended ones included) read before and after each saga round, over the orders that reached "
                "a final state in it"
            ),
            "by_process": {
                name: summarize([row["cpu_ms_per_order"][name] for row in saga_rounds]) for name in system
            },
            "processes_in_total": system,
            "total": summarize(totals),
            "harness": summarize([row["cpu_ms_per_order"]["harness"] for row in saga_rounds]),
        }
        if against_reference:
            reference = report.BASELINE_CPU_MS_PER_ORDER
            result["reference"] = reference
            result["ratio_to_reference"] = summarize([ratio(total, reference["total"]) for total in totals])
        return result

    @contextlib.asynccontextmanager
    async def on_clusters(self) -> AsyncIterator[OnClusters]:
        """The same system, set up and prepared as this one is, on the clustered engines: a Benchmark
        of its own, so that its saga rounds run through the same code as R3's. (Its nginx is this
        one's, which it never uses.)"""
        work_dir = self.work_dir / "clusters"
        await asyncio.to_thread(work_dir.mkdir)
        if self.stack.servers.choice.kind != "private":
            # The clusters run this machine's binaries: against containers or servers elsewhere, the
            # ratio would measure that difference too.
            say(
                f"NOTE: the single-node servers are {self.stack.servers.choice.kind}, the clusters private "
                "instances of this machine's binaries (DEVSTACK_SERVERS=private compares like with like)"
            )
        async with contextlib.AsyncExitStack() as exits:
            say("starting the clusters: a Postgres primary and its synchronous standby, three RabbitMQ nodes")
            clusters = await exits.enter_async_context(bench_clusters())
            say(clusters.describe())
            say("starting users_service, orders_service and the gateway on the clusters")
            stack = await exits.enter_async_context(
                bench_stack(clusters.servers, work_dir, jwt_ttl_seconds=JWT_TTL_SECONDS)
            )
            # What is measured is the cost of three replicas of every queue: not before they are there.
            await clusters.rabbitmq.wait_queues_fully_replicated(stack.broker.name)
            final = await exits.enter_async_context(final_states(stack.rabbitmq_url))
            found = cluster_pids(clusters)
            say("clusters' processes: " + ", ".join(f"{k} {v}" for k, v in found.items()))
            bench = Benchmark(
                self.settings, stack, self.nginx, self.wrk, self.session, final, work_dir, found
            )
            await bench.prepare()
            yield OnClusters(bench, clusters.describe())

    def _saga_load(self) -> str:
        return (
            f"POST {CURRENT_PREFIX}/orders to orders_service, at most {self.settings.saga_in_flight}"
            " orders undecided"
        )

    async def r3_r4(self, *, with_r4: bool = True, on_clusters: bool = False) -> dict[str, dict[str, Any]]:
        """R3, R3 on the clusters if asked (in R3's rounds), and R4 if asked: each under its JSON key."""
        settings = self.settings
        results: dict[str, dict[str, Any]] = {}
        async with (
            databases(self.stack.servers, "raw_orders", "raw_users") as dsns,
            raw_saga(dsns, settings.customers) as raw,
        ):
            async with contextlib.AsyncExitStack() as exits:
                clusters = await exits.enter_async_context(self.on_clusters()) if on_clusters else None
                results |= await self._r3(raw, clusters)
            # The clusters are stopped by now: idle, they would still take some CPU from R4's latencies.
            if with_r4:
                results["r4_saga_latency"] = await self._r4(raw, results["r3_saga_throughput"])
        return results

    async def _r3(self, raw: RawSaga, clusters: OnClusters | None) -> dict[str, dict[str, Any]]:
        """The saga against raw Postgres, and against itself on the clusters, in the same rounds (the
        order rotating), so that both ratios compare runs made on the machine as it was then."""
        settings = self.settings
        saga_rounds: list[dict[str, Any]] = []
        raw_rounds: list[dict[str, Any]] = []
        cluster_rounds: list[dict[str, Any]] = []
        busy: list[float] = []
        async with self.memory.phase("R3"):
            for turn in range(settings.rounds):
                busy.append(await self.busy_before("R3", turn))
                for name in rotated(["saga", "raw", "clusters"] if clusters else ["saga", "raw"], turn):
                    if name == "saga":
                        saga_rounds.append(await self.saga_round())
                    elif name == "clusters":
                        assert clusters is not None
                        cluster_rounds.append(await clusters.bench.saga_round())
                    else:
                        raw_rounds.append(
                            await raw.throughput(workers=settings.raw_workers, duration=settings.duration)
                        )
                raw_rate = raw_rounds[-1]["transactions_per_second"]
                line = f"R3 round {turn + 1}: saga {_saga_summary(saga_rounds[-1])}, raw {raw_rate:.0f} tx/s"
                if cluster_rounds:
                    line += f"; on the clusters, saga {_saga_summary(cluster_rounds[-1])}"
                say(line)
        saga_rates = [row["orders_per_second"] for row in saga_rounds]
        raw_rates = [row["orders_per_second"] for row in raw_rounds]
        r3: dict[str, Any] = {
            "unit": "orders/s",
            "load": self._saga_load(),
            "saga": summarize(saga_rates),
            "raw_transactions_per_second": summarize([row["transactions_per_second"] for row in raw_rounds]),
            "saga_transactions": SAGA_TRANSACTIONS,
            "raw_per_order": summarize(raw_rates),
            "ratio": summarize([ratio(saga, raw) for saga, raw in zip(saga_rates, raw_rates, strict=True)]),
            "cpu_ms_per_order": self._cpu_per_order(saga_rounds, against_reference=True),
            "saga_rounds": saga_rounds,
            "raw_rounds": raw_rounds,
            "machine_busy_before_round": busy,
        }
        results = {"r3_saga_throughput": r3}
        if clusters is not None:
            cluster_rates = [row["orders_per_second"] for row in cluster_rounds]
            results["r3_cluster_saga_throughput"] = {
                "unit": "orders/s",
                "load": self._saga_load(),
                "engines": clusters.engines,
                "single_node_engines": self.stack.servers.describe(),
                "replication": REPLICATION,
                "method": (
                    "the same stack, settings and saga rounds as R3's, on the clusters; each R3 round runs "
                    "the saga on both (the order rotating), and the ratio is taken round by round"
                ),
                "saga": summarize(cluster_rates),
                "single_node": summarize(saga_rates),
                "ratio_cluster_single": summarize(
                    [ratio(on, off) for on, off in zip(cluster_rates, saga_rates, strict=True)]
                ),
                "cpu_ms_per_order": self._cpu_per_order(cluster_rounds, against_reference=False),
                "server_pids": clusters.bench.servers,
                "saga_rounds": cluster_rounds,
                "machine_busy_before_round": busy,
            }
        return results

    async def _r4(self, raw: RawSaga, r3: dict[str, Any]) -> dict[str, Any]:
        settings = self.settings
        # A quarter, not a half: R3 posts to orders_service directly, R4 goes through the gateway,
        # whose CPU comes from the same two cores; at half of R3's rate that path is saturated, and
        # R4 would measure a queue, not the saga.
        rate = max(2.0, R4_SHARE_OF_R3 * r3["saga"]["median"])
        latency_rounds = []
        r4_busy: list[float] = []
        async with self.memory.phase("R4"):
            for turn in range(settings.rounds):
                r4_busy.append(await self.busy_before("R4", turn))
                latency_rounds.append(
                    await saga_latency(
                        self.session,
                        self.stack.gateway.url,
                        self.customers,
                        self.final,
                        rate=rate,
                        warmup=settings.warmup,
                        duration=settings.duration,
                        drain_timeout=60,
                    )
                )
                say(
                    f"R4 round {turn + 1} at {rate:.1f}/s: p50 {latency_rounds[-1]['final_ms']['p50']:.1f} ms"
                )
        raw_parts = await raw.parts(settings.parts_samples)
        confirm = await publish_confirm_latency(self.stack.rabbitmq_url, settings.parts_samples)
        post = statistics.median(row["post_answered_ms"]["p50"] for row in latency_rounds)
        parts = {
            "http_post_through_gateway": post,
            "commit_reserve_credit": raw_parts["reserve"]["p50"],
            "commit_approve_order": raw_parts["approve"]["p50"],
            "relay_claim_x3": 3 * raw_parts["relay_claim"]["p50"],
            "publish_confirm_x3": 3 * confirm["p50"],
        }
        parts_sum = sum(parts.values())
        p50s = [row["final_ms"]["p50"] for row in latency_rounds]
        r4 = {
            "unit": "ms",
            "rate": rate,
            "rate_basis": f"{R4_SHARE_OF_R3:.0%} of R3's median saga throughput",
            "path": f"POST {CURRENT_PREFIX}/orders through the gateway, until the final event arrives",
            "latency": {
                key: summarize([row["final_ms"][key] for row in latency_rounds]) for key in PERCENTILES
            },
            "post_answered": {
                key: summarize([row["post_answered_ms"][key] for row in latency_rounds])
                for key in PERCENTILES
            },
            "send_lag": {
                key: summarize([row["send_lag_ms"][key] for row in latency_rounds]) for key in PERCENTILES
            },
            "parts_p50": parts,
            "parts_sum": parts_sum,
            "parts_definition": (
                "p50 of: the POST's answer through the gateway (its own commit included), users' and "
                "orders' consumer transactions and three relay claims issued directly with asyncpg one "
                "at a time, and three persistent, mandatory, confirmed publishes to a quorum queue"
            ),
            "raw_parts": raw_parts,
            "publish_confirm": confirm,
            "ratio_p50_to_parts": summarize([ratio(p50, parts_sum) for p50 in p50s]),
            "rounds": latency_rounds,
            "machine_busy_before_round": r4_busy,
        }
        return r4

    # --- R5 ----------------------------------------------------------------------------------------

    async def r5(self) -> dict[str, Any]:
        settings = self.settings
        rows: list[dict[str, float]] = []
        busy: list[float] = []
        async with self.memory.phase("R5"):
            for turn in range(settings.rounds):
                busy.append(await self.busy_before("R5", turn))
                await self._r5_round(turn, rows)
        return {
            "unit": "events/s",
            "events_per_round": settings.relay_events,
            "relay": summarize([row["relay"] for row in rows]),
            "raw_aio_pika": summarize([row["raw"] for row in rows]),
            "ratio": summarize([ratio(row["relay"], row["raw"]) for row in rows]),
            "rounds": rows,
            "machine_busy_before_round": busy,
        }

    async def _r5_round(self, turn: int, rows: list[dict[str, float]]) -> None:
        settings = self.settings
        row: dict[str, float] = {}
        for name in rotated(["relay", "raw"], turn):
            if name == "relay":
                result = await relay_throughput(
                    self.stack.admin_dsn("orders_service"), settings.relay_events, 120
                )
            else:
                result = await raw_throughput(self.stack.rabbitmq_url, settings.relay_events)
            row[name] = result["events_per_second"]
        rows.append(row)
        say(f"R5 round {turn + 1}: relay {row['relay']:.0f}/s, raw aio-pika {row['raw']:.0f}/s")

    # --- the relay's wake-up, from the services' own log lines -------------------------------------

    async def relay_wake(self) -> dict[str, Any]:
        """Restart both services at LOG_LEVEL=INFO (only here: logging costs), place orders at a low
        fixed rate, and read commit-to-publish-start from their "outbox written" and "published,
        confirmed" lines."""
        offsets = {}
        for service in (self.stack.users, self.stack.orders):
            offsets[service.name] = service.log_size()
            await self.stack.restart(service.name, LOG_LEVEL="INFO")
        await saga_latency(
            self.session,
            self.stack.orders.url,
            self.customers,
            self.final,
            rate=self.settings.wake_rate,
            warmup=0.0,
            duration=self.settings.wake_duration,
            drain_timeout=30,
        )
        orders = int(self.settings.wake_rate * self.settings.wake_duration)
        delays: list[tuple[str, float]] = []

        async def every_publish_logged() -> bool:
            # A final event reaches us before its relay logs the confirm: wait for the last lines.
            delays.clear()
            for service in (self.stack.users, self.stack.orders):
                delays.extend(relay_wake_delays(service.log_text(offsets[service.name])))
            return len(delays) >= 3 * orders

        with contextlib.suppress(RuntimeError):
            await eventually(every_publish_logged, within=10, what="every publish logged", interval=0.1)
        by_type: dict[str, list[float]] = {}
        for event_type, delay in delays:
            by_type.setdefault(event_type, []).append(delay)
        return {
            "unit": "ms",
            "rate": self.settings.wake_rate,
            "orders": orders,
            "all": latency_percentiles([delay for _, delay in delays]),
            "by_event_type": {name: latency_percentiles(values) for name, values in sorted(by_type.items())},
            "method": (
                "services restarted at LOG_LEVEL=INFO; per event, the time of its 'outbox written' line "
                "(logged just after the commit) to its publish start "
                "('published, confirmed' minus confirm_ms)"
            ),
        }

    # --- profiles ----------------------------------------------------------------------------------

    async def profiles(self, directory: Path) -> dict[str, Any]:
        settings = self.settings
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        seconds = max(3.0, settings.duration)
        gateway_pid = self.stack.gateway.pid
        assert gateway_pid is not None
        recording = await profile.start_recording(gateway_pid, directory / "gateway-r1.txt", seconds)
        await run_wrk(
            self.wrk,
            self.stack.gateway.url + self.order_path,
            token=self.customers[0].token,
            script_dir=self.work_dir,
            threads=settings.wrk_threads,
            connections=settings.wrk_connections,
            duration=seconds + 1,
            cpus=settings.wrk_cpus,
        )
        await recording.wait()
        recordings = {}
        for service in (self.stack.orders, self.stack.users):
            assert service.pid is not None
            recordings[service.name] = await profile.start_recording(
                service.pid, directory / f"{service.name}-r3.txt", seconds
            )
        await saga_throughput(
            self.session,
            self.stack.orders.url,
            self.customers,
            self.final,
            warmup=0,
            duration=seconds + 1,
            in_flight=settings.saga_in_flight,
            posters=settings.saga_posters,
            drain_timeout=120,
        )
        for process in recordings.values():
            await process.wait()
        summaries = {"gateway under R1": profile.summarize(directory / "gateway-r1.txt", seconds)}
        for name in recordings:
            summaries[f"{name} under R3"] = profile.summarize(directory / f"{name}-r3.txt", seconds)
        return summaries


async def wait_for_quiet_machine(patience: float) -> None:
    """Published figures need a machine that does nothing else: wait (up to `patience` seconds) until
    other work leaves the CPUs mostly idle; then go on either way, and the table will say how busy."""
    deadline = time.monotonic() + patience
    while True:
        busy = await asyncio.to_thread(cpu_busy_fraction, 5.0)
        if busy <= report.QUIET_BUSY:
            say(f"the machine is quiet ({busy:.0%} busy)")
            return
        if time.monotonic() > deadline:
            say(f"the machine is still {busy:.0%} busy; going on (the table will say so)")
            return
        say(f"waiting for a quiet machine: {busy:.0%} of the CPUs busy")


async def run_sections(
    bench: Benchmark, settings: Settings, nginx_binary: str, results: dict[str, Any]
) -> None:
    sections = settings.sections
    if "r1" in sections:
        say("R1 gateway throughput")
        results["r1_gateway_throughput"] = await bench.r1()
    if "r1-cheap" in sections:
        say("R1 again, against a cheap upstream (nginx serving a fixed answer)")
        results["r1_cheap_upstream"] = await bench.r1_cheap(nginx_binary)
    if "r2" in sections:
        say("R2 gateway latency, unpinned and pinned")
        results["r2_gateway_latency"] = await bench.r2(
            results["r1_gateway_throughput"]["throughput"]["gateway"]["median"]
        )
    if "r3" in sections:
        say(
            "R3 saga throughput"
            + (", on single-node servers and on the clusters" if "r3-cluster" in sections else "")
            + (", R4 saga latency" if "r4" in sections else "")
        )
        results |= await bench.r3_r4(with_r4="r4" in sections, on_clusters="r3-cluster" in sections)
    if "r5" in sections:
        say("R5 relay")
        results["r5_relay"] = await bench.r5()


def required_tools(settings: Settings) -> tuple[str, str]:
    """nginx and wrk; and whatever else the run's sections need, asked for before anything starts,
    not after ten minutes of measuring."""
    nginx_binary, wrk_binary = find_tool("nginx"), find_tool("wrk")
    if nginx_binary is None or wrk_binary is None:
        missing = [name for name, found in (("nginx", nginx_binary), ("wrk", wrk_binary)) if found is None]
        raise SystemExit(
            f"bench: {' and '.join(missing)} not found; install Debian's packages: "
            "apt-get install nginx-light wrk"
        )
    if settings.profile_dir is not None and profile.py_spy() is None:
        raise SystemExit("bench: --profile needs py-spy: pip install py-spy")
    if "r3-cluster" in settings.sections:
        try:
            cluster_binaries()
        except NoServers as error:
            raise SystemExit(f"bench: r3-cluster: {error}") from None
        if find_tool("haproxy") is None:
            raise SystemExit(
                "bench: r3-cluster puts HAProxy in front of the RabbitMQ nodes: apt-get install haproxy"
            )
    return nginx_binary, wrk_binary


async def run(settings: Settings, output: Path, chart: Path) -> dict[str, Any]:
    nginx_binary, wrk_binary = required_tools(settings)
    if settings.wait_quiet > 0:
        await wait_for_quiet_machine(settings.wait_quiet)
    started = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, Any] = {
        "schema": 1,
        "mode": "smoke" if settings.smoke else "full",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            key: str(value)
            if isinstance(value, Path)
            else sorted(value)
            if isinstance(value, frozenset)
            else value
            for key, value in dataclasses.asdict(settings).items()
        },
        "sections": [name for name in SECTIONS if name in settings.sections],
    }
    try:
        async with contextlib.AsyncExitStack() as exits:
            say("starting Postgres and RabbitMQ")
            servers = await exits.enter_async_context(bench_servers())
            say(servers.describe())
            say("machine")
            results["machine"] = await machine_info(servers, nginx_binary, wrk_binary)
            say("starting users_service, orders_service and the gateway")
            stack = await exits.enter_async_context(
                bench_stack(servers, work_dir, jwt_ttl_seconds=JWT_TTL_SECONDS)
            )
            nginx = await exits.enter_async_context(
                running_nginx(nginx_binary, work_dir / "nginx", free_port(), f"127.0.0.1:{stack.orders.port}")
            )
            session = await exits.enter_async_context(
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
            )

            async def nginx_ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{nginx.url}/healthz") as response:
                        return response.status == 200
                return False

            await eventually(nginx_ready, within=20, what=f"nginx ready\n{nginx.log_text()}")
            final = await exits.enter_async_context(final_states(stack.rabbitmq_url))
            found = await server_pids(servers)
            say("servers' processes: " + (", ".join(f"{k} {v}" for k, v in found.items()) or "none found"))
            results["server_pids"] = found
            roots = {name: [pid] for name, pid in found.items()}
            bench = Benchmark(settings, stack, nginx, wrk_binary, session, final, work_dir, roots)
            await bench.prepare()
            idle = await bench.idle_memory()
            await run_sections(bench, settings, nginx_binary, results)
            await asyncio.sleep(1)  # a quiet second: the idle figure after load, not the tail of R5
            results["cpu_by_phase"] = bench.memory.cpu
            results["memory"] = {
                "unit": "MB resident (VmRSS; nginx: master and worker)",
                "idle": idle,
                "peaks": bench.memory.peaks,
                "idle_after_load": await bench.idle_memory(),
            }
            if settings.profile_dir is not None:
                say(f"profiles (py-spy) into {settings.profile_dir}")
                results["profile"] = await bench.profiles(settings.profile_dir)
            if "r4" in settings.sections:
                say("relay wake-up (services restarted at LOG_LEVEL=INFO)")
                results["r4_saga_latency"]["relay_wake"] = await bench.relay_wake()
    except BaseException:
        say(f"stopped early; the services' logs and nginx's are kept in {work_dir}")
        raise
    else:
        shutil.rmtree(work_dir, ignore_errors=True)
    results["load_average_at_end"] = list(os.getloadavg())
    results["elapsed_seconds"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    await asyncio.to_thread(output.parent.mkdir, parents=True, exist_ok=True)
    document = orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"
    await asyncio.to_thread(output.write_bytes, document)
    report.chart(results, chart)
    print(report.table(results))
    print(f"\nJSON: {output}\nchart: {chart}")
    if any(math.isnan(float(target["value"])) for target in results["targets"]):
        say("some ratios could not be computed (NaN): see the JSON")
    return results
