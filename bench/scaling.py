"""`python -m bench.scaling`: what one more replica of each service buys on this machine.

The figures behind docs/scaling.md. Each scenario starts its own processes on free ports, with
databases and a RabbitMQ virtual host of its own (bench/stack.py), and removes them at the end:

- saga: orders reaching a final state per second under a closed loop that keeps `--in-flight`
  orders undecided, posted straight to orders_service, round-robin over its replicas (no gateway:
  `python -m bench` measures that), with the CPU, commits and rows each order costs, and the
  connections each database holds;
- relay: outbox rows the relays of 1 or 2 orders_service replicas publish per second;
- consumer: events users_service's consumers apply per second from a queue filled beforehand, so
  the time one event costs (its transaction, and the relay of the answer it writes);
- broker: one quorum queue's confirmed publishes and acked deliveries per second, without Postgres;
- postgres: pgbench's short read-write transactions per second, each one commit (and fsync).
"""

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import functools
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import aio_pika
import aiohttp
import asyncpg
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from bench.relay import relay_throughput
from bench.saga import FinalStates, final_states, post_order
from bench.stack import Customer, bench_servers, databases, register_customers
from bench.stats import percentile
from devstack.keys import make_key_pair
from devstack.ports import free_port
from devstack.processes import ServiceProcess, service_process
from devstack.rabbitmq import Vhost
from devstack.servers import Servers
from devstack.waiting import eventually
from shared.bus_contract import bus
from shared.envelope import Cause, Envelope
from shared.events import OrderCreated
from shared.messages import event_message

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SCENARIOS = ("saga", "relay", "consumer", "broker", "postgres")
# Server processes this run did not start but measures: they serve the whole machine, so their CPU
# includes anything else running meanwhile. RabbitMQ's command-line tools are Erlang too (beam.smp,
# started as an escript): they are not the server.
SHARED_SERVERS = {"postgres": ("postgres", None), "rabbitmq": ("beam.smp", "escript")}


@dataclasses.dataclass(frozen=True)
class Settings:
    replicas: tuple[int, ...]
    scenarios: tuple[str, ...]
    duration: float  # seconds measured in the saga
    warmup: float  # seconds of load before they start
    in_flight: int  # undecided orders the saga's closed loop keeps
    posters: int  # concurrent POSTs
    customers: int
    relay_events: int
    consumer_events: int
    broker_messages: int
    pgbench_clients: int


# --- the processes --------------------------------------------------------------------------------


@dataclasses.dataclass
class System:
    """Databases, a vhost, and whatever replicas of the two services a scenario starts on them."""

    servers: Servers
    work_dir: Path
    broker: Vhost
    databases: dict[str, str]  # "users" / "orders" -> admin DSN
    services: list[ServiceProcess] = dataclasses.field(default_factory=list)

    def replica(self, module: str) -> ServiceProcess:
        index = sum(1 for service in self.services if service.module == module) + 1
        private, public = self.work_dir / "jwt-private.pem", self.work_dir / "jwt-public.pem"
        env = {
            "HTTP_PORT": str(free_port()),
            "RABBITMQ_URL": self.broker.url_for(module),
            "DATABASE_URL": self.databases[module.removesuffix("_service")],
            "JWT_PUBLIC_KEY_FILE": str(public),
            "JWT_PRIVATE_KEY_FILE": str(private),
            # As in bench/stack.py: a service that logs every event would be measured logging.
            "LOG_LEVEL": "WARNING",
            "LOG_FORMAT": "json",
        }
        service = service_process(f"{module}-{index}", module, env, self.work_dir)
        self.services.append(service)
        return service

    async def start(self, module: str, count: int) -> list[ServiceProcess]:
        started = [self.replica(module) for _ in range(count)]
        # At once: their migrations queue on an advisory lock, and the rest of the start overlaps.
        await asyncio.gather(*(service.start() for service in started))
        return started


@contextlib.asynccontextmanager
async def system(servers: Servers) -> AsyncIterator[System]:
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as work:
        work_dir = Path(work)
        make_key_pair(work_dir)
        async with (
            servers.rabbitmq.vhost("bench") as broker,
            databases(servers, "users", "orders") as dsns,
        ):
            running = System(servers, work_dir, broker, dsns)
            try:
                yield running
            finally:
                # Shielded: on Ctrl-C the processes still stop, before their databases are dropped.
                await asyncio.shield(asyncio.gather(*(service.stop() for service in running.services)))


# --- what the machine spends ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat); None once
    it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def total_cpu_seconds(pids: list[int]) -> float:
    return sum(seconds for pid in pids if (seconds := cpu_seconds(pid)) is not None)


def pids_of(services: list[ServiceProcess]) -> list[int]:
    return [pid for service in services if (pid := service.pid) is not None]


def cpu_groups(**services: list[ServiceProcess]) -> dict[str, Callable[[], list[int]]]:
    """The processes whose CPU a scenario reports: its services, the servers, and this one."""
    groups: dict[str, Callable[[], list[int]]] = {
        name: functools.partial(pids_of, replicas) for name, replicas in services.items()
    }
    groups |= {name: functools.partial(pids_named, *server) for name, server in SHARED_SERVERS.items()}
    groups["bench"] = lambda: [os.getpid()]  # the load generator
    return groups


def cpu_per_unit(cpu: dict[str, float], rate: float) -> dict[str, float]:
    """CPU milliseconds each group spent per unit of work (an order, an event): the figure that
    says how many cores a rate needs, whatever else shares the machine."""
    return {f"CPU ms {name}": 10 * share / rate for name, share in cpu.items() if name != "machine"}


def pids_named(command: str, unless: str | None) -> list[int]:
    """Processes running `command`, except those whose command line mentions `unless`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() != command:
                    continue
                if unless is not None and unless.encode() in (entry / "cmdline").read_bytes():
                    continue
                found.append(int(entry.name))
    return found


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot: busy excludes idle and iowait."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # guest times are already counted in user and nice
    return total - values[3] - values[4], total


class CpuWatch:
    """CPU each group of processes used between `start` and `stop`, in percent of one core."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._before: dict[str, dict[int, float]] = {}
        self._machine: tuple[float, float] = (0.0, 0.0)
        self._started = 0.0

    def start(self) -> None:
        self._before = {
            name: {pid: seconds for pid in pids() if (seconds := cpu_seconds(pid)) is not None}
            for name, pids in self.groups.items()
        }
        self._machine = machine_cpu()
        self._started = time.perf_counter()

    def stop(self) -> dict[str, float]:
        elapsed = time.perf_counter() - self._started
        # A process that exited meanwhile took its last figures with it: it counts for nothing.
        used = {
            name: sum(
                now - before
                for pid, before in self._before[name].items()
                if (now := cpu_seconds(pid)) is not None
            )
            for name in self.groups
        }
        busy, total = machine_cpu()
        shares = {name: 100 * seconds / elapsed for name, seconds in used.items()}
        # In cores, like the rest: 200 % is both cores of a two-core machine busy.
        cores = os.cpu_count() or 1
        shares["machine"] = 100 * cores * (busy - self._machine[0]) / max(total - self._machine[1], 1)
        return shares


class DatabaseWatch:
    """What the run's databases did between `start` and `stop`.

    From pg_stat_database: all commits (read-only ones too, such as the pool's reset of a returned
    connection) and rows written. Backends report these about once a second, so a ten-second window
    is right to within a few percent. From the tables' own timestamps (each the start of the
    transaction that wrote it): the commits that wrote, and so waited for a WAL flush: placed orders,
    inbox rows (one per consumer transaction), and relay batches (one published_at each).
    """

    WRITING_COMMITS = [
        "SELECT count(*) FROM inbox WHERE received_at >= $1 AND received_at < $2",
        "SELECT count(DISTINCT published_at) FROM outbox WHERE published_at >= $1 AND published_at < $2",
    ]
    PLACED = "SELECT count(*) FROM orders WHERE created_at >= $1 AND created_at < $2"

    def __init__(self, admin_dsn: str, dsns: dict[str, str]) -> None:
        self.admin_dsn = admin_dsn
        self.dsns = dsns  # "users" / "orders" -> DSN
        self.names = [dsn.rsplit("/", 1)[1] for dsn in dsns.values()]
        self._before: asyncpg.Record | None = None

    async def _read(self) -> asyncpg.Record:
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            row = await admin.fetchrow(
                """
                SELECT sum(xact_commit)::bigint AS commits,
                       sum(tup_inserted + tup_updated + tup_deleted)::bigint AS rows,
                       clock_timestamp() AS at
                FROM pg_stat_database WHERE datname = ANY($1::text[])
                """,
                self.names,
            )
        finally:
            await admin.close()
        assert row is not None
        return row

    async def start(self) -> None:
        self._before = await self._read()

    async def stop(self) -> dict[str, int]:
        """Commits, writing commits and rows written since `start`."""
        assert self._before is not None
        after = await self._read()
        writing = 0
        for name, dsn in self.dsns.items():
            connection = await asyncpg.connect(dsn)
            try:
                for query in [*self.WRITING_COMMITS, *([self.PLACED] if name == "orders" else [])]:
                    writing += await connection.fetchval(query, self._before["at"], after["at"])
            finally:
                await connection.close()
        return {
            "commits": after["commits"] - self._before["commits"],
            "writing": writing,
            "rows": after["rows"] - self._before["rows"],
        }


async def bytes_per_row(dsn: str, table: str) -> float:
    """The table's size with its indexes, per row it holds now."""
    connection = await asyncpg.connect(dsn)
    try:
        size: float = await connection.fetchval(
            f"SELECT pg_total_relation_size('{table}')::float8 / greatest(count(*), 1) FROM {table}"
        )
    finally:
        await connection.close()
    return size


async def connections(admin_dsn: str) -> dict[str, int]:
    """Connections each database holds now, from pg_stat_activity."""
    admin = await asyncpg.connect(admin_dsn)
    try:
        rows = await admin.fetch("SELECT datname, count(*) AS n FROM pg_stat_activity GROUP BY datname")
    finally:
        await admin.close()
    return {row["datname"]: row["n"] for row in rows if row["datname"]}


async def counters(http: aiohttp.ClientSession, service: ServiceProcess, family: str) -> float:
    """A counter's total over its labels, from the replica's /metrics."""
    async with http.get(f"{service.url}/metrics") as response:
        text = await response.text()
    return sum(
        sample.value
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
        if sample.name == f"{family}_total"
    )


# --- the scenarios --------------------------------------------------------------------------------


async def saga(servers: Servers, settings: Settings, replicas: int) -> dict[str, float]:
    async with system(servers) as running, aiohttp.ClientSession() as http:
        users = await running.start("users_service", replicas)
        orders = await running.start("orders_service", replicas)
        customers = await register_customers(http, users[0].url, settings.customers)
        watch = CpuWatch(cpu_groups(users_service=users, orders_service=orders))
        written = DatabaseWatch(running.servers.postgres.admin_dsn, running.databases)
        async with final_states(running.broker.admin_url) as final:
            result = await _closed_loop(
                http, [service.url for service in orders], customers, final, settings, watch, written
            )
            held = await connections(running.servers.postgres.admin_dsn)
        for name, dsn in running.databases.items():
            result[f"connections {name}"] = held.get(dsn.rsplit("/", 1)[1], 0)
        result["outbox bytes/row"] = await bytes_per_row(running.databases["orders"], "outbox")
        result["inbox bytes/row"] = await bytes_per_row(running.databases["users"], "inbox")
        for service in [*users, *orders]:
            result[f"consumed {service.log.stem}"] = await counters(http, service, "events_consumed")
        return result


async def _closed_loop(
    http: aiohttp.ClientSession,
    urls: list[str],
    customers: Sequence[Customer],
    final: FinalStates,
    settings: Settings,
    watch: CpuWatch,
    written: DatabaseWatch,
) -> dict[str, float]:
    """Keep `in_flight` orders undecided: a slot is taken by a POST and given back by the order's
    final event, so the load follows what the saga finishes rather than piling up a backlog."""
    slots = asyncio.Semaphore(settings.in_flight)
    stopping = False
    posts: list[float] = []  # when each accepted POST was answered
    latencies: list[tuple[float, float]] = []  # (posted at, seconds to the final event)
    errors = 0

    async def poster(turn: int) -> None:
        nonlocal errors
        while not stopping:
            await slots.acquire()
            sent = time.perf_counter()
            order_id = await post_order(http, urls[turn % len(urls)], customers[turn % len(customers)])
            turn += settings.posters
            if order_id is None:
                errors += 1
                slots.release()
                continue
            posts.append(time.perf_counter())

            def decided(moment: float, sent: float = sent) -> None:
                latencies.append((sent, moment - sent))
                slots.release()

            final.when_final(order_id, decided)

    tasks = [asyncio.create_task(poster(turn)) for turn in range(settings.posters)]
    try:
        await asyncio.sleep(settings.warmup)  # the load runs meanwhile: a measurement window, not a wait
        await written.start()
        window_start = time.perf_counter()
        watch.start()
        await asyncio.sleep(settings.duration)
        cpu = watch.stop()
        window_end = time.perf_counter()
        database = await written.stop()
    finally:
        stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    window = window_end - window_start
    in_window = sorted(seconds for sent, seconds in latencies if window_start <= sent < window_end)
    rate = final.count_between(window_start, window_end) / window
    return {
        "final/s": rate,
        "accepted/s": sum(1 for moment in posts if window_start <= moment < window_end) / window,
        "p50 ms": 1000 * percentile(in_window, 0.5),
        "p95 ms": 1000 * percentile(in_window, 0.95),
        "POST errors": errors,
        "writing commits/order": database["writing"] / (rate * window),
        "all commits/order": database["commits"] / (rate * window),
        "rows written/order": database["rows"] / (rate * window),
        "machine CPU %": cpu["machine"],
        **cpu_per_unit(cpu, rate),
    }


async def relay(servers: Servers, settings: Settings, replicas: int) -> dict[str, float]:
    """orders_service alone: rows of an event no service consumes, so no consumer competes."""
    async with system(servers) as running, aiohttp.ClientSession() as http:
        orders = await running.start("orders_service", replicas)
        before = total_cpu_seconds(pids_of(orders))
        measured = await relay_throughput(running.databases["orders"], settings.relay_events, within=120)
        # Over the whole call, idle polls included: an upper bound of what relaying one event costs.
        spent = total_cpu_seconds(pids_of(orders)) - before
        result: dict[str, float] = {
            "published/s": measured["events_per_second"],
            "CPU ms orders_service (at most)": 1000 * spent / settings.relay_events,
        }
        for service in orders:
            result[f"published {service.log.stem}"] = await counters(http, service, "events_published")
        return result


async def consumer(servers: Servers, settings: Settings, replicas: int) -> dict[str, float]:
    """Fill users_service's queue while no consumer runs, then start the replicas and time the
    inbox filling up, from the moment all of them were ready (the last to start is late)."""
    async with system(servers) as running, aiohttp.ClientSession() as http:
        (seed,) = await running.start("users_service", 1)  # declares the queues, registers the users
        customers = await register_customers(http, seed.url, settings.customers)
        await seed.stop()
        await _publish_orders_created(running.broker, customers, settings.consumer_events)
        consumers = await running.start("users_service", replicas)
        all_ready = datetime.datetime.now(datetime.UTC)
        watch = CpuWatch(cpu_groups(users_service=consumers))
        watch.start()
        users_db = await asyncpg.connect(running.databases["users"])
        try:

            async def applied() -> bool:
                done: int = await users_db.fetchval("SELECT count(*) FROM inbox")
                return done >= settings.consumer_events

            await eventually(applied, within=300, what="every event applied", interval=0.1)
            cpu = watch.stop()
            row = await users_db.fetchrow(
                "SELECT count(*) AS n, max(received_at) AS last FROM inbox WHERE received_at >= $1", all_ready
            )
        finally:
            await users_db.close()
        assert row is not None
        span = (row["last"] - all_ready).total_seconds()
        rate = row["n"] / span if span > 0 else float("nan")
        result = {
            "applied/s": rate,
            "ms per event per replica": 1000 * replicas / rate,
            "events measured": float(row["n"]),
            "machine CPU %": cpu["machine"],
            **cpu_per_unit(cpu, rate),
        }
        for service in consumers:
            result[f"consumed {service.log.stem}"] = await counters(http, service, "events_consumed")
        return result


async def _publish_orders_created(broker: Vhost, customers: Sequence[Customer], count: int) -> None:
    """OrderCreated events as orders_service's relay publishes them: persistent, mandatory, confirmed."""
    # As orders_service, its publisher: users_service accepts it from no one else.
    publisher = bus().publisher[OrderCreated.TYPE]
    connection = await aio_pika.connect(broker.url_for(publisher))
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange("events")
        cause = Cause(correlation_id="bench-scaling", causation_id="bench-scaling")
        for offset in range(0, count, 200):
            envelopes = [
                Envelope.wrap(
                    OrderCreated(uuid.uuid4(), uuid.UUID(customers[n % len(customers)].user_id), 1),
                    source="orders_service",
                    cause=cause,
                )
                for n in range(offset, min(offset + 200, count))
            ]
            await asyncio.gather(
                *(
                    exchange.publish(
                        event_message(envelope.to_json(), envelope, user_id=publisher),
                        routing_key=envelope.type,
                    )
                    for envelope in envelopes
                )
            )
    finally:
        await connection.close()


async def broker(servers: Servers, settings: Settings, replicas: int) -> dict[str, float]:
    """One quorum queue, published to with confirms 200 at a time, then drained with prefetch 200.

    `replicas` queues side by side, each with its own connection: one more queue, one more Raft
    log, as a partitioned queue would add."""
    async with servers.rabbitmq.vhost("bench") as broker:
        rates = await asyncio.gather(
            *(_one_queue(broker.admin_url, f"bench.q{n}", settings.broker_messages) for n in range(replicas))
        )
    return {
        "published/s": sum(published for published, _ in rates),
        "delivered/s": sum(delivered for _, delivered in rates),
    }


async def _one_queue(rabbitmq_url: str, name: str, count: int) -> tuple[float, float]:
    sample = Envelope.wrap(
        OrderCreated(uuid.uuid4(), uuid.uuid4(), 1), source="orders_service", cause=Cause("b", "b")
    )
    body = sample.to_json()
    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        started = time.perf_counter()
        for _ in range(0, count, 200):
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        event_message(body, sample, user_id=None), routing_key=name
                    )
                    for _ in range(200)
                )
            )
        published = count / (time.perf_counter() - started)

        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=200)
        queue = await consuming.get_queue(name)
        drained = asyncio.Event()
        received = 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal received
            await message.ack()
            received += 1
            if received == count:
                drained.set()

        started = time.perf_counter()
        await queue.consume(on_message)
        await asyncio.wait_for(drained.wait(), 120)
        delivered = count / (time.perf_counter() - started)
    finally:
        await connection.close()
    return published, delivered


async def postgres(servers: Servers, settings: Settings, replicas: int) -> dict[str, float]:
    """pgbench's simple-update transactions (three statements and one commit), with 1 client and
    with `--pgbench-clients`; `replicas` is not used: Postgres is one server either way."""
    del replicas
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        return {}
    async with databases(servers, "pgbench") as dsns:
        dsn = dsns["pgbench"]
        await _run(pgbench, "-i", "-q", "-s", "10", dsn)
        result = {}
        for clients in (1, settings.pgbench_clients):
            output = await _run(
                pgbench, "-n", "-N", "-c", str(clients), "-j", "2", "-T", str(int(settings.duration)), dsn
            )
            tps = next(line for line in output.splitlines() if line.startswith("tps = "))
            result[f"tps, {clients} clients"] = float(tps.split()[2])
        return result


async def _run(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {output.decode(errors='replace')[-2000:]}")
    return output.decode()


# --- the run ---------------------------------------------------------------------------------------


def table(title: str, rows: dict[int, dict[str, float]]) -> str:
    """One Markdown table per scenario: a row per replica count, a column per figure."""
    columns = list(dict.fromkeys(key for figures in rows.values() for key in figures))
    lines = [
        f"### {title}",
        "",
        "| replicas | " + " | ".join(columns) + " |",
        "|---:|" + "---:|" * len(columns),
    ]
    for replicas, figures in rows.items():
        cells = [_cell(figures.get(column)) for column in columns]
        lines.append(f"| {replicas} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


async def run(settings: Settings) -> None:
    measure = {"saga": saga, "relay": relay, "consumer": consumer, "broker": broker, "postgres": postgres}
    load_before = os.getloadavg()[0]
    async with bench_servers() as servers:
        print(servers.describe(), file=sys.stderr, flush=True)
        for scenario in settings.scenarios:
            counts = (1,) if scenario == "postgres" else settings.replicas
            rows: dict[int, dict[str, float]] = {}
            for replicas in counts:
                print(f"{scenario}, {replicas} replica(s)...", file=sys.stderr, flush=True)
                rows[replicas] = await measure[scenario](servers, settings, replicas)
            print(table(scenario, rows), end="\n\n", flush=True)
    print(
        f"{os.cpu_count()} CPUs; load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
        " (other work on the machine shares it)",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", default="1,2", help="replica counts to compare (default 1,2)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"scenarios, of {','.join(SCENARIOS)}")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before (default 3)")
    parser.add_argument("--in-flight", type=int, default=200, help="undecided orders kept (default 200)")
    parser.add_argument("--posters", type=int, default=8, help="concurrent POSTs (default 8)")
    parser.add_argument("--customers", type=int, default=40, help="users placing orders (default 40)")
    parser.add_argument("--relay-events", type=int, default=5000, help="outbox rows relayed (default 5000)")
    parser.add_argument("--consumer-events", type=int, default=4000, help="events consumed (default 4000)")
    parser.add_argument("--broker-messages", type=int, default=10_000, help="per queue (default 10000)")
    parser.add_argument("--pgbench-clients", type=int, default=8, help="pgbench clients (default 8)")
    arguments = parser.parse_args(argv)
    scenarios = tuple(name.strip() for name in arguments.only.split(",") if name.strip())
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    settings = Settings(
        replicas=tuple(int(count) for count in arguments.replicas.split(",")),
        scenarios=scenarios,
        duration=arguments.duration,
        warmup=arguments.warmup,
        in_flight=arguments.in_flight,
        posters=arguments.posters,
        customers=arguments.customers,
        relay_events=arguments.relay_events,
        consumer_events=arguments.consumer_events,
        broker_messages=arguments.broker_messages,
        pgbench_clients=arguments.pgbench_clients,
    )
    try:
        uvloop.run(run(settings))
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
