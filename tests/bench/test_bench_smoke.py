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


def test_r1_measures_throughput_direct_through_nginx_and_through_the_gateway(smoke: dict[str, Any]) -> None:
    r1 = smoke["r1_gateway_throughput"]
    for target in ("direct", "nginx", "gateway"):
        positive(r1["throughput"][target]["median"])
    assert 0 < number(r1["ratio_gateway_nginx"]["median"]) < 5


def test_r2_measures_latency_with_an_open_loop_generator(smoke: dict[str, Any]) -> None:
    r2 = smoke["r2_gateway_latency"]
    positive(r2["rate"])
    for target in ("direct", "nginx", "gateway"):
        ordered(r2["latency"][target])
        assert positive(r2["achieved_rate"][target]["median"]) > 0.5 * r2["rate"]
    for key in ("p50", "p99", "p99.9"):
        number(r2["gateway_added"][key]["median"])
        number(r2["generator_lag"][key]["median"])


def test_r3_compares_the_saga_with_the_raw_transaction_rate(smoke: dict[str, Any]) -> None:
    r3 = smoke["r3_saga_throughput"]
    positive(r3["saga"]["median"])
    raw = positive(r3["raw_transactions_per_second"]["median"])
    assert number(r3["raw_per_order"]["median"]) == pytest.approx(raw / r3["saga_transactions"], rel=1e-6)
    for round_ in r3["saga_rounds"]:
        assert round_["undecided_after_drain"] == 0, "orders left undecided: the saga stalled"
        assert round_["post_errors"] == 0


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


def test_r5_compares_the_relay_with_raw_aio_pika(smoke: dict[str, Any]) -> None:
    r5 = smoke["r5_relay"]
    positive(r5["relay"]["median"])
    positive(r5["raw_aio_pika"]["median"])
    positive(r5["ratio"]["median"])


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
    assert [target["id"] for target in verdicts] == ["R1", "R2", "R3", "R4", "R4", "R5", "MEM"]
    for target in verdicts:
        assert isinstance(target["pass"], bool)
        assert ("PASS" if target["pass"] else "MISS") in smoke["_stdout"]
