"""The benchmark harness, run in smoke mode (seconds, tiny load), so that it cannot rot unnoticed.

The figures of a smoke run mean nothing; what is checked is that every section is there, with
numbers of the right kind and order. The full run (`make bench`) is not part of the suite.
"""

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.machine import find_tool
from devstack.servers import Servers
from tests.support import require_tool

ROOT = Path(__file__).resolve().parents[2]
SMOKE_DEADLINE = 300.0
SERVICES = ("gateway", "users_service", "orders_service")


def number(value: Any) -> float:
    """A JSON number that is finite (NaN is written as null, which fails here)."""
    assert isinstance(value, int | float), value
    assert math.isfinite(value), value
    return float(value)


def positive(value: Any) -> float:
    figure = number(value)
    assert figure > 0, figure
    return figure


def ordered(percentiles: dict[str, Any]) -> None:
    """Latency percentiles that are positive and do not decrease from p50 to p99.9."""
    medians = [positive(percentiles[key]["median"]) for key in ("p50", "p99", "p99.9")]
    assert medians == sorted(medians), percentiles


def the_suites_servers(servers: Servers) -> dict[str, str]:
    """The benchmark's servers, named as servers of yours would be: the suite's own, already running."""
    return {
        "DEVSTACK_SERVERS": "external",
        "DEVSTACK_POSTGRES_DSN": servers.postgres.admin_dsn,
        "DEVSTACK_RABBITMQ_URL": servers.rabbitmq.url(),
        "DEVSTACK_RABBITMQ_MANAGEMENT_URL": servers.rabbitmq.management.base_url,
    }


@pytest.fixture(scope="module")
def smoke(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = [tool for tool in ("nginx", "wrk") if find_tool(tool) is None]
    require_tool(
        None if missing else "nginx and wrk",
        f"the benchmark needs {' and '.join(missing)}, from Debian's packages: "
        "apt-get install nginx-light wrk (.ci/run installs them)",
    )
    directory = tmp_path_factory.mktemp("bench")
    output, chart = directory / "smoke.json", directory / "smoke.png"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(output), "--chart", str(chart)],
        cwd=ROOT,
        env={**os.environ, **the_suites_servers(servers)},
        capture_output=True,
        text=True,
        timeout=SMOKE_DEADLINE,
        check=False,
    )
    assert done.returncode == 0, f"python -m bench --smoke failed:\n{done.stdout}\n{done.stderr}"
    assert "Targets" in done.stdout, done.stdout
    assert chart.read_bytes().startswith(b"\x89PNG"), "no PNG chart written"
    results: dict[str, Any] = orjson.loads(output.read_bytes())
    results["_stdout"] = done.stdout
    return results


def test_it_describes_the_machine(smoke: dict[str, Any]) -> None:
    machine = smoke["machine"]
    assert smoke["mode"] == "smoke"
    assert machine["nproc"] >= 1
    for key in ("cpu_model", "kernel", "python", "postgres", "rabbitmq", "nginx", "wrk"):
        assert machine[key], key
        assert machine[key] != "unknown", key


def busy_before_each_round(section: dict[str, Any], rounds: int) -> None:
    """The machine's busy share, measured before every round of a section."""
    busy = section["machine_busy_before_round"]
    assert len(busy) == rounds, busy
    for fraction in busy:
        assert 0 <= number(fraction) <= 1, busy


def test_r1_measures_throughput_direct_through_nginx_and_through_the_gateway(smoke: dict[str, Any]) -> None:
    r1 = smoke["r1_gateway_throughput"]
    for target in ("direct", "nginx", "gateway"):
        positive(r1["throughput"][target]["median"])
    assert 0 < number(r1["ratio_gateway_nginx"]["median"]) < 5
    busy_before_each_round(r1, smoke["settings"]["rounds"])


@pytest.mark.parametrize("section", ["r1_gateway_throughput", "r1_cheap_upstream"])
def test_r1_counts_each_proxys_cpu_time_per_request(smoke: dict[str, Any], section: str) -> None:
    r1 = smoke[section]
    for proxy in ("nginx", "gateway"):
        # Clock ticks are 10 ms; a second of load at thousands of requests is well above one.
        positive(r1["cpu_us_per_request"][proxy]["median"])
    positive(r1["ratio_cpu_gateway_nginx"]["median"])
    for row in r1["cpu_rounds"]:
        for proxy in ("nginx", "gateway"):
            assert row[proxy]["requests"] > 0
            assert row[proxy]["us_per_request"] == pytest.approx(
                1e6 * row[proxy]["cpu_seconds"] / row[proxy]["requests"]
            )


def test_r1_runs_again_against_a_cheap_upstream(smoke: dict[str, Any]) -> None:
    cheap = smoke["r1_cheap_upstream"]
    for target in ("direct", "nginx", "gateway"):
        positive(cheap["throughput"][target]["median"])
    positive(cheap["ratio_gateway_nginx"]["median"])
    # The stand-in costs almost nothing: nothing through it is slower than orders_service's answer.
    real = smoke["r1_gateway_throughput"]["throughput"]["direct"]["median"]
    assert cheap["throughput"]["direct"]["median"] > real
    busy_before_each_round(cheap, smoke["settings"]["rounds"])


def test_r2_measures_latency_with_an_open_loop_generator(smoke: dict[str, Any]) -> None:
    r2 = smoke["r2_gateway_latency"]
    positive(r2["rate"])
    for target in ("direct", "nginx", "gateway"):
        ordered(r2["latency"][target])
        assert positive(r2["achieved_rate"][target]["median"]) > 0.5 * r2["rate"]
    for key in ("p50", "p99", "p99.9"):
        number(r2["gateway_added"][key]["median"])
        number(r2["generator_lag"][key]["median"])
    busy_before_each_round(r2, smoke["settings"]["rounds"])


def test_r2_pins_the_gateway_to_a_cpu_of_its_own_and_gives_the_affinities_back(smoke: dict[str, Any]) -> None:
    pinned = smoke["r2_gateway_latency"]["pinned"]
    if "skipped" in pinned:
        assert len(os.sched_getaffinity(0)) < 2, pinned
        return
    for target in ("direct", "gateway"):
        ordered(pinned["latency"][target])
    for key in ("p50", "p99", "p99.9"):
        number(pinned["gateway_added"][key]["median"])
    assert pinned["rounds"]
    for row in pinned["rounds"]:
        assert row["affinity_during"] == {
            "gateway": pinned["gateway_cpus"],
            "orders_service": pinned["other_cpus"],
        }
        assert row["affinity_after"] == row["affinity_before"], "affinities not given back"
        assert row["pin_failures"] == []
        assert 0 < number(row["gateway_cpu"]["by_gateway"]) <= number(row["gateway_cpu"]["busy"]) + 0.05
        # The harness, nginx and both services at least; Postgres's and RabbitMQ's trees beside.
        assert row["processes_pinned"]["gateway"] == 1
        assert row["processes_pinned"]["everything else"] > 4


def test_r3_compares_the_saga_with_the_raw_transaction_rate(smoke: dict[str, Any]) -> None:
    r3 = smoke["r3_saga_throughput"]
    positive(r3["saga"]["median"])
    raw = positive(r3["raw_transactions_per_second"]["median"])
    assert number(r3["raw_per_order"]["median"]) == pytest.approx(raw / r3["saga_transactions"], rel=1e-6)
    for round_ in r3["saga_rounds"]:
        assert round_["undecided_after_drain"] == 0, "orders left undecided: the saga stalled"
        assert round_["post_errors"] == 0
    busy_before_each_round(r3, smoke["settings"]["rounds"])


def test_r3_counts_the_cpu_time_of_each_process_per_order(smoke: dict[str, Any]) -> None:
    assert set(smoke["server_pids"]) == {"postgres", "rabbitmq"}
    cpu = smoke["r3_saga_throughput"]["cpu_ms_per_order"]
    assert cpu["processes_in_total"] == [*SERVICES, "postgres", "rabbitmq"]
    # R3 posts to orders_service directly: the gateway may have had nothing to do.
    assert number(cpu["by_process"]["gateway"]["median"]) >= 0
    for name in ("users_service", "orders_service", "postgres", "rabbitmq"):
        positive(cpu["by_process"][name]["median"])
    total = positive(cpu["total"]["median"])
    assert total == pytest.approx(
        sum(cpu["by_process"][name]["median"] for name in cpu["processes_in_total"])
    )
    assert number(cpu["harness"]["median"]) >= 0
    positive(cpu["reference"]["total"])
    positive(cpu["ratio_to_reference"]["median"])


def test_r4_measures_the_saga_latency_its_parts_and_the_relay_wake_up(smoke: dict[str, Any]) -> None:
    r4 = smoke["r4_saga_latency"]
    ordered(r4["latency"])
    parts = r4["parts_p50"]
    assert set(parts) >= {"http_post_through_gateway", "publish_confirm_x3", "commit_reserve_credit"}
    assert number(r4["parts_sum"]) == pytest.approx(sum(positive(part) for part in parts.values()))
    # The saga holds every part in turn, so it cannot take less than a fraction of their sum.
    assert number(r4["latency"]["p50"]["median"]) > 0.3 * r4["parts_sum"]
    wake = r4["relay_wake"]
    assert wake["all"]["count"] >= wake["orders"], "too few publishes matched to their commits"
    assert 0 <= number(wake["all"]["p50"]) < 1000
    busy_before_each_round(r4, smoke["settings"]["rounds"])


def test_r5_compares_the_relay_with_raw_aio_pika(smoke: dict[str, Any]) -> None:
    r5 = smoke["r5_relay"]
    positive(r5["relay"]["median"])
    positive(r5["raw_aio_pika"]["median"])
    positive(r5["ratio"]["median"])
    busy_before_each_round(r5, smoke["settings"]["rounds"])


def test_memory_is_sampled_idle_and_under_load(smoke: dict[str, Any]) -> None:
    memory = smoke["memory"]
    for name in (*SERVICES, "nginx"):
        assert 1 < number(memory["idle"][name]) < 2000, name
        for phase, peaks in memory["peaks"].items():
            assert number(peaks[name]) > 1, (phase, name)


def test_cpu_use_is_accounted_per_phase(smoke: dict[str, Any]) -> None:
    cpu = smoke["cpu_by_phase"]
    assert list(cpu) == ["R1", "R2", "R3", "R4", "R5"]
    for phase in cpu.values():
        # The benchmark's own processes are part of the machine's busy time.
        assert 0 < number(phase["bench_tree_cores"]) <= number(phase["machine_busy_cores"]) + 0.1


def test_every_target_has_a_verdict_printed(smoke: dict[str, Any]) -> None:
    verdicts = smoke["targets"]
    ids = ["R1", "R1", "R1c", "R2", "R2", "R3", "R3", "R4", "R4", "R5", "MEM", "MEM"]
    if "skipped" in smoke["r2_gateway_latency"]["pinned"]:
        ids.remove("R2")
    assert [target["id"] for target in verdicts] == ids
    for target in verdicts:
        assert isinstance(target["pass"], bool)
        assert ("PASS" if target["pass"] else "MISS") in smoke["_stdout"]
        assert isinstance(target["busy_rounds"], list)
