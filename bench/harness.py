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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench import profile, report
from bench.machine import MemoryWatch, cpu_busy_fraction, find_tool, machine_info
from bench.nginx import Nginx, running_nginx
from bench.relay import raw_throughput, relay_throughput
from bench.saga import (
    SAGA_TRANSACTIONS,
    FinalStates,
    final_states,
    post_order,
    publish_confirm_latency,
    raw_saga,
    relay_wake_delays,
    saga_latency,
    saga_throughput,
)
from bench.stack import Stack, bench_servers, bench_stack, databases, register_customers, stock_the_catalogue
from bench.stats import latency_percentiles, ratio, summarize
from bench.wrk import run_wrk
from devstack.ports import free_port
from devstack.waiting import eventually
from shared.api_versions import CURRENT_PREFIX

PERCENTILES = ("p50", "p99", "p99.9")
R4_SHARE_OF_R3 = 0.25


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
    wait_quiet: float = 0.0  # seconds to wait, at most, for the machine to be quiet before starting

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
    ) -> None:
        self.settings = settings
        self.stack = stack
        self.nginx = nginx
        self.wrk = wrk
        self.session = session
        self.final = final
        self.work_dir = work_dir
        self.memory = MemoryWatch(self.process_ids)
        self.customers: list[Any] = []
        self.order_path = ""

    def process_ids(self) -> dict[str, list[int]]:
        found = {
            service.name: [service.pid]
            for service in self.stack.processes.values()
            if service.pid is not None
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

    # --- R1 ----------------------------------------------------------------------------------------

    async def r1(self) -> dict[str, Any]:
        settings = self.settings
        token = self.customers[0].token
        rounds: list[dict[str, Any]] = []
        for base in self.targets.values():  # warm every path: connections, pools, caches
            await run_wrk(
                self.wrk,
                base + self.order_path,
                token=token,
                script_dir=self.work_dir,
                threads=settings.wrk_threads,
                connections=settings.wrk_connections,
                duration=1,
                cpus=settings.wrk_cpus,
            )
        async with self.memory.phase("R1"):
            for turn in range(settings.rounds):
                row: dict[str, Any] = {}
                for name in rotated(list(self.targets), turn):
                    result = await run_wrk(
                        self.wrk,
                        self.targets[name] + self.order_path,
                        token=token,
                        script_dir=self.work_dir,
                        threads=settings.wrk_threads,
                        connections=settings.wrk_connections,
                        duration=settings.duration,
                        cpus=settings.wrk_cpus,
                    )
                    if not result.clean:
                        raise RuntimeError(f"R1 {name}: errors under load:\n{result.output}")
                    row[name] = result.requests_per_second
                rounds.append(row)
                say(f"R1 round {turn + 1}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in row.items()))
        return {
            "unit": "requests/s",
            "request": f"GET {CURRENT_PREFIX}/orders/{{id}}, authenticated, keep-alive on both hops",
            "generator": f"wrk -t{settings.wrk_threads} -c{settings.wrk_connections} -d{settings.duration:g}s"
            + (f" (taskset -c {settings.wrk_cpus})" if settings.wrk_cpus else " (not pinned)"),
            "throughput": {name: summarize([row[name] for row in rounds]) for name in self.targets},
            "ratio_gateway_nginx": summarize([ratio(row["gateway"], row["nginx"]) for row in rounds]),
            "ratio_nginx_direct": summarize([ratio(row["nginx"], row["direct"]) for row in rounds]),
            "rounds": rounds,
        }

    # --- R2 ----------------------------------------------------------------------------------------

    async def r2(self, gateway_max: float) -> dict[str, Any]:
        settings = self.settings
        rate = max(10.0, 0.5 * gateway_max)
        token = self.customers[0].token
        rounds: list[dict[str, Any]] = []
        async with self.memory.phase("R2"):
            for turn in range(settings.rounds):
                await self._r2_round(turn, rate, token, rounds)

        def added(proxy: str, key: str) -> dict[str, Any]:
            return summarize(
                [row[proxy]["latency_ms"][key] - row["direct"]["latency_ms"][key] for row in rounds]
            )

        return {
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
            "gateway_added": {key: added("gateway", key) for key in PERCENTILES},
            "nginx_added": {key: added("nginx", key) for key in PERCENTILES},
            "generator_lag": {
                key: summarize([max(row[name]["lag_ms"][key] for name in self.targets) for row in rounds])
                for key in PERCENTILES
            },
            "achieved_rate": {
                name: summarize([row[name]["achieved_rate"] for row in rounds]) for name in self.targets
            },
            "rounds": rounds,
        }

    async def _r2_round(self, turn: int, rate: float, token: str, rounds: list[dict[str, Any]]) -> None:
        row: dict[str, Any] = {}
        for name in rotated(list(self.targets), turn):
            row[name] = await run_openloop(self.targets[name] + self.order_path, token, rate, self.settings)
            # A connection a proxy closes under a request in flight costs that one request; more
            # than one in a thousand means the rate or the setup is wrong, and the round is void.
            if row[name]["errors"] > row[name]["completed"] / 1000 or set(row[name]["statuses"]) != {"200"}:
                raise RuntimeError(f"R2 {name}: errors: {row[name]}")
        rounds.append(row)
        say(
            f"R2 round {turn + 1} at {rate:.0f}/s: "
            + ", ".join(f"{k} p99 {v['latency_ms']['p99']:.2f} ms" for k, v in row.items())
        )

    # --- R3 and R4 ---------------------------------------------------------------------------------

    async def r3_r4(self) -> tuple[dict[str, Any], dict[str, Any]]:
        settings = self.settings
        async with (
            databases(self.stack.servers, "raw_orders", "raw_users") as dsns,
            raw_saga(dsns, settings.customers) as raw,
        ):
            saga_rounds: list[dict[str, Any]] = []
            raw_rounds: list[dict[str, Any]] = []
            async with self.memory.phase("R3"):
                for turn in range(settings.rounds):
                    for name in rotated(["saga", "raw"], turn):
                        if name == "saga":
                            saga_rounds.append(
                                await saga_throughput(
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
                            )
                        else:
                            raw_rounds.append(
                                await raw.throughput(workers=settings.raw_workers, duration=settings.duration)
                            )
                    say(
                        f"R3 round {turn + 1}: saga {saga_rounds[-1]['orders_per_second']:.1f} orders/s, "
                        f"raw {raw_rounds[-1]['transactions_per_second']:.0f} tx/s"
                    )
            saga_rates = [row["orders_per_second"] for row in saga_rounds]
            raw_rates = [row["orders_per_second"] for row in raw_rounds]
            r3: dict[str, Any] = {
                "unit": "orders/s",
                "load": (
                    f"POST {CURRENT_PREFIX}/orders to orders_service, at most {settings.saga_in_flight}"
                    " orders undecided"
                ),
                "saga": summarize(saga_rates),
                "raw_transactions_per_second": summarize(
                    [row["transactions_per_second"] for row in raw_rounds]
                ),
                "saga_transactions": SAGA_TRANSACTIONS,
                "raw_per_order": summarize(raw_rates),
                "ratio": summarize(
                    [ratio(saga, raw) for saga, raw in zip(saga_rates, raw_rates, strict=True)]
                ),
                "saga_rounds": saga_rounds,
                "raw_rounds": raw_rounds,
            }

            # A quarter, not a half: R3 posts to orders_service directly, R4 goes through the gateway,
            # whose CPU comes from the same two cores; at half of R3's rate that path is saturated, and
            # R4 would measure a queue, not the saga.
            rate = max(2.0, R4_SHARE_OF_R3 * r3["saga"]["median"])
            latency_rounds = []
            async with self.memory.phase("R4"):
                for turn in range(settings.rounds):
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
                        f"R4 round {turn + 1} at {rate:.1f}/s: "
                        f"p50 {latency_rounds[-1]['final_ms']['p50']:.1f} ms"
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
        }
        return r3, r4

    # --- R5 ----------------------------------------------------------------------------------------

    async def r5(self) -> dict[str, Any]:
        settings = self.settings
        rows: list[dict[str, float]] = []
        async with self.memory.phase("R5"):
            for turn in range(settings.rounds):
                await self._r5_round(turn, rows)
        return {
            "unit": "events/s",
            "events_per_round": settings.relay_events,
            "relay": summarize([row["relay"] for row in rows]),
            "raw_aio_pika": summarize([row["raw"] for row in rows]),
            "ratio": summarize([ratio(row["relay"], row["raw"]) for row in rows]),
            "rounds": rows,
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


async def run(settings: Settings, output: Path, chart: Path) -> dict[str, Any]:
    nginx_binary, wrk_binary = find_tool("nginx"), find_tool("wrk")
    if nginx_binary is None or wrk_binary is None:
        missing = [name for name, found in (("nginx", nginx_binary), ("wrk", wrk_binary)) if found is None]
        raise SystemExit(
            f"bench: {' and '.join(missing)} not found; install Debian's packages: "
            "apt-get install nginx-light wrk"
        )
    if settings.profile_dir is not None and profile.py_spy() is None:
        raise SystemExit("bench: --profile needs py-spy: pip install py-spy")
    if settings.wait_quiet > 0:
        await wait_for_quiet_machine(settings.wait_quiet)
    started = time.monotonic()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    results: dict[str, Any] = {
        "schema": 1,
        "mode": "smoke" if settings.smoke else "full",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": {
            key: str(value) if isinstance(value, Path) else value
            for key, value in dataclasses.asdict(settings).items()
        },
    }
    try:
        async with contextlib.AsyncExitStack() as exits:
            say("starting Postgres and RabbitMQ")
            servers = await exits.enter_async_context(bench_servers())
            say(servers.describe())
            say("machine")
            results["machine"] = await machine_info(servers, nginx_binary, wrk_binary)
            say("starting users_service, orders_service and the gateway")
            stack = await exits.enter_async_context(bench_stack(servers, work_dir, jwt_ttl_seconds=4 * 3600))
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
            bench = Benchmark(settings, stack, nginx, wrk_binary, session, final, work_dir)
            await bench.prepare()
            idle = await bench.idle_memory()
            say("R1 gateway throughput")
            results["r1_gateway_throughput"] = await bench.r1()
            say("R2 gateway latency")
            results["r2_gateway_latency"] = await bench.r2(
                results["r1_gateway_throughput"]["throughput"]["gateway"]["median"]
            )
            say("R3 saga throughput, R4 saga latency")
            results["r3_saga_throughput"], results["r4_saga_latency"] = await bench.r3_r4()
            say("R5 relay")
            results["r5_relay"] = await bench.r5()
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
