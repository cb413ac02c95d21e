"""The harness's own arithmetic and parsers, without any server: percentiles, wrk's summary, HTTP
framing in the open-loop generator, the relay wake-up read from log lines, the sections `--only`
names, the cheap upstream's body, the rows of R3 on the clusters, and the CPU counters and pinning
read and set through /proc."""

import math
import os
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from bench import report
from bench.cpu import PinGroup, affinity, listening_pid, pinned, process_seconds, tree
from bench.harness import SECTIONS, sections_to_run
from bench.nginx import quoted_body
from bench.openloop import response_length
from bench.saga import relay_wake_delays
from bench.stats import latency_percentiles, percentile, summarize
from bench.wrk import parse

WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:8080/api/orders/1
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    25.01ms    3.10ms  60.00ms   90.00%
    Req/Sec     1.28k   100.00     1.40k    70.00%
  12800 requests in 10.00s, 9.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 2
  Non-2xx or 3xx responses: 5
Requests/sec:   1279.93
Transfer/sec:      0.90MB
"""


def test_percentiles_are_nearest_rank() -> None:
    values = [float(value) for value in range(1, 1001)]
    assert percentile(values, 0.5) == 500
    assert percentile(values, 0.99) == 990
    assert percentile(values, 0.999) == 999
    assert math.isnan(percentile([], 0.5))
    assert latency_percentiles([3.0, 1.0, 2.0])["max"] == 3.0


def test_summaries_give_the_median_and_the_spread_and_leave_nan_rounds_out() -> None:
    summary = summarize([3.0, 1.0, math.nan, 2.0, 10.0])
    assert (summary["median"], summary["min"], summary["max"], summary["rounds"]) == (2.5, 1.0, 10.0, 4)
    assert math.isnan(summarize([math.nan])["median"])


def test_wrk_summary_is_read_with_its_errors() -> None:
    result = parse(WRK_OUTPUT)
    assert result.requests_per_second == pytest.approx(1279.93)
    assert (result.requests, result.non_2xx, result.socket_errors) == (12800, 5, 3)
    assert not result.clean
    assert parse(
        WRK_OUTPUT.replace("  Socket errors: connect 0, read 1, write 0, timeout 2\n", "").replace(
            "  Non-2xx or 3xx responses: 5\n", ""
        )
    ).clean


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabcHTTP/1.1", (41, 200)),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab", None),
        (b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", (67, 404)),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", None),
        (b"HTTP/1.1 204 No Content\r\n\r\n", (27, 204)),
        (b"HTTP/1.1 200 OK\r\nContent-", None),
    ],
)
def test_the_generator_frames_responses(raw: bytes, expected: tuple[int, int] | None) -> None:
    assert response_length(raw) == expected


def test_relay_wake_is_read_from_the_services_log_lines() -> None:
    lines = [
        '{"event": "outbox written", "type": "orders.order.created", "order": "abc", '
        '"timestamp": "2026-01-01T00:00:00.000000Z"}',
        "not json: a traceback line",
        '{"event": "published, confirmed", "type": "orders.order.created", "order": "abc", '
        '"confirm_ms": 2.0, "timestamp": "2026-01-01T00:00:00.005000Z"}',
        '{"event": "published, confirmed", "type": "orders.order.created", "order": "zzz", '
        '"confirm_ms": 1.0, "timestamp": "2026-01-01T00:00:00.009000Z"}',
    ]
    [(event_type, delay)] = relay_wake_delays("\n".join(lines))
    assert event_type == "orders.order.created"
    assert delay == pytest.approx(3.0, abs=1e-3)  # published 5 ms after the commit, 2 ms of it confirming


def test_only_names_sections_and_brings_along_those_they_need() -> None:
    assert sections_to_run(None) == frozenset(SECTIONS)
    assert sections_to_run("r3") == {"r3"}
    assert sections_to_run("r2, R4") == {"r1", "r2", "r3", "r4"}
    with pytest.raises(ValueError, match="choose from"):
        sections_to_run("r6")


def test_r3_on_the_clusters_runs_in_r3s_rounds_and_only_when_named_in_a_smoke_run() -> None:
    assert sections_to_run("r3-cluster") == {"r3", "r3-cluster"}
    assert "r3-cluster" in sections_to_run(None)
    # make test's smoke run has neither HAProxy to count on nor half a minute for the clusters to start.
    assert sections_to_run(None, smoke=True) == frozenset(SECTIONS) - {"r3-cluster"}
    assert sections_to_run("r3-cluster", smoke=True) == {"r3", "r3-cluster"}


def test_r3_on_the_clusters_is_shown_beside_the_single_node_saga_without_a_verdict() -> None:
    r3 = {
        "cpu_ms_per_order": {
            "by_process": {"postgres": summarize([1.2]), "rabbitmq": summarize([1.0])},
            "total": summarize([2.2]),
        }
    }
    on_clusters = {
        "single_node": summarize([340.0, 350.0, 360.0]),
        "saga": summarize([190.0, 200.0, 230.0]),
        "ratio_cluster_single": summarize([0.56, 0.57, 0.64]),
        "cpu_ms_per_order": {
            "by_process": {
                "postgres": summarize([2.0]),
                "rabbitmq": summarize([3.0]),
                "haproxy": summarize([0.5]),
            },
            "total": summarize([5.5]),
        },
    }
    lines = report._r3_cluster_section(on_clusters, r3)
    # A row: its label in a column of 34 characters after two spaces, then its figures.
    rows = {line[2:36].strip(): line[37:] for line in lines if len(line) > 37 and line[36] == " "}
    assert rows["saga, single-node servers"] == "350.0 [340.0-360.0]"
    assert rows["saga, clusters"] == "200.0 [190.0-230.0]"
    assert rows["clusters / single-node"].startswith("0.57 [0.56-0.64]")
    assert rows["postgres"] == "1.20 [1.20-1.20] / 2.00 [2.00-2.00]"
    assert rows["haproxy"] == "- / 0.50 [0.50-0.50]"  # in front of the RabbitMQ nodes: clusters only
    assert rows["all processes"] == "2.20 [2.20-2.20] / 5.50 [5.50-5.50]"
    assert not any("PASS" in line or "MISS" in line for line in lines), "no target: no verdict"


def test_the_cheap_upstream_serves_a_body_as_nginx_reads_it() -> None:
    assert quoted_body(b'{"note": "it\'s \\\\ here"}') == '{"note": "it\\\'s \\\\\\\\ here"}'
    with pytest.raises(ValueError, match="expands"):
        quoted_body(b'{"price": "$1"}')


def test_a_process_cpu_time_is_read_from_its_own_counters() -> None:
    before = process_seconds([os.getpid()])
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:  # burn CPU: the counter is what is under test
        pass
    assert process_seconds([os.getpid()]) > before
    assert process_seconds([2**22 + 1]) == 0  # no such process: it counts nothing


def test_a_listening_socket_is_found_by_its_port() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert listening_pid(listener.getsockname()[1]) == os.getpid()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def test_pinning_holds_processes_on_their_cpus_then_gives_their_affinity_back(
    sleeper: subprocess.Popen[bytes],
) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("pinning one process apart needs two CPUs")
    original = affinity(sleeper.pid)
    assert sleeper.pid in tree(os.getpid())
    group = {"sleeper": PinGroup(lambda: [sleeper.pid], frozenset(cpus[:1]))}
    seen: list[frozenset[int]] = []

    def fail_while_pinned() -> None:
        with pinned(group) as done:
            seen.append(affinity(sleeper.pid))
            assert done.processes == {"sleeper": 1}
            raise RuntimeError("a failure in the block")

    with pytest.raises(RuntimeError, match="in the block"):
        fail_while_pinned()
    assert seen == [{cpus[0]}]
    assert affinity(sleeper.pid) == original
