"""The verdicts (each ratio against its target, PASS or MISS: measured, not asserted), the printed
table and the chart."""

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display: runs on CI and over SSH

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen before pyplot loads)

from shared.api_versions import CURRENT_PREFIX  # noqa: E402

MEMORY_LIMIT_MB = 80.0
# Busier than this before the run (share of all CPUs), the machine was not quiet: say so.
QUIET_BUSY = 0.15
SERVICES = ("gateway", "users_service", "orders_service")


def _verdict(
    ident: str, what: str, value: float, spread: tuple[float, float], target: str, passed: bool
) -> dict[str, Any]:
    return {
        "id": ident,
        "what": what,
        "value": value,
        "spread": list(spread),
        "target": target,
        "pass": bool(passed) if not math.isnan(value) else False,
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    r1 = results["r1_gateway_throughput"]["ratio_gateway_nginx"]
    r2 = results["r2_gateway_latency"]["gateway_added"]["p99"]
    r3 = results["r3_saga_throughput"]["ratio"]
    r4 = results["r4_saga_latency"]["ratio_p50_to_parts"]
    wake = results["r4_saga_latency"].get("relay_wake", {}).get("all", {})
    r5 = results["r5_relay"]["ratio"]
    idle = results["memory"]["idle"]
    idle_max = max(idle.get(name, math.nan) for name in SERVICES)
    wake_p99 = float(wake.get("p99", math.nan))
    wake_max = float(wake.get("max", math.nan))
    return [
        _verdict(
            "R1",
            "gateway / nginx throughput",
            r1["median"],
            (r1["min"], r1["max"]),
            ">= 0.5",
            r1["median"] >= 0.5,
        ),
        _verdict(
            "R2",
            "gateway-added p99 at 50% load (ms)",
            r2["median"],
            (r2["min"], r2["max"]),
            "<= 1 ms",
            r2["median"] <= 1.0,
        ),
        _verdict(
            "R3",
            "saga / (raw tx rate / 6)",
            r3["median"],
            (r3["min"], r3["max"]),
            ">= 0.5",
            r3["median"] >= 0.5,
        ),
        _verdict(
            "R4",
            "saga p50 / sum of parts",
            r4["median"],
            (r4["min"], r4["max"]),
            "<= 1.5",
            r4["median"] <= 1.5,
        ),
        _verdict(
            "R4",
            "relay wake p99, commit to publish (ms)",
            wake_p99,
            (wake_p99, wake_max),
            "<= 5 ms",
            wake_p99 <= 5.0,
        ),
        _verdict(
            "R5", "relay / raw aio-pika", r5["median"], (r5["min"], r5["max"]), ">= 0.8", r5["median"] >= 0.8
        ),
        _verdict(
            "MEM",
            "largest service RSS when idle (MB)",
            idle_max,
            (idle_max, idle_max),
            "< 80 MB",
            idle_max < MEMORY_LIMIT_MB,
        ),
    ]


def _cell(summary: dict[str, Any], digits: int = 0) -> str:
    """median [min-max]"""
    median, low, high = summary["median"], summary["min"], summary["max"]
    if median is None or (isinstance(median, float) and math.isnan(median)):
        return "n/a"
    return f"{median:.{digits}f} [{low:.{digits}f}-{high:.{digits}f}]"


def table(results: dict[str, Any]) -> str:
    """The run as text: the machine, then each result (R1 to R5), memory, CPU, targets, profiles."""
    sections = [
        _header(results),
        _gateway_sections(results["r1_gateway_throughput"], results["r2_gateway_latency"]),
        _saga_sections(results["r3_saga_throughput"], results["r4_saga_latency"]),
        _relay_section(results["r5_relay"]),
        _memory_section(results["memory"]),
        _cpu_section(results),
        _targets_section(results["targets"]),
        _profile_section(results.get("profile")),
    ]
    return "\n".join(line for section in sections for line in section)


def _header(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    rounds = results["settings"]["rounds"]
    lines = [
        f"Benchmark ({results['mode']}), {results['started_at']}: "
        f"{machine['nproc']} x {machine['cpu_model']}, "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}, {machine['os']}",
        f"Python {machine['python']}, PostgreSQL {machine['postgres']}, RabbitMQ {machine['rabbitmq']}, "
        f"nginx {machine['nginx']}, wrk {machine['wrk']}; load generators share the machine with the system "
        "under test",
        f"median [min-max] over {rounds} round(s); load average at start "
        f"{machine['load_average_at_start'][0]:.2f}, at end {results['load_average_at_end'][0]:.2f}",
    ]
    if machine["cpu_busy_before_start"] > QUIET_BUSY:
        lines.append(
            f"WARNING: {machine['cpu_busy_before_start']:.0%} of the CPUs were busy before the run "
            "started: other work shared the machine, and these figures show it"
        )
    return lines


GATEWAY_LABELS = {
    "direct": "orders_service directly",
    "nginx": "nginx -> orders_service",
    "gateway": "gateway -> orders_service",
}
PERCENTILES = ("p50", "p99", "p99.9")


def _gateway_sections(r1: dict[str, Any], r2: dict[str, Any]) -> list[str]:
    lines = ["", f"R1 gateway throughput, {r1['request']}, {r1['generator']} (requests/s)"]
    for name, label in GATEWAY_LABELS.items():
        lines.append(f"  {label:<34} {_cell(r1['throughput'][name])}")
    lines.append(f"  {'gateway / nginx':<34} {_cell(r1['ratio_gateway_nginx'], 2)}")
    lines += ["", f"R2 latency at {r2['rate']:.0f} requests/s, open loop (ms: p50 / p99 / p99.9)"]
    for name, label in GATEWAY_LABELS.items():
        cells = " / ".join(_cell(r2["latency"][name][key], 2) for key in PERCENTILES)
        lines.append(f"  {label:<34} {cells}")
    for name in ("gateway", "nginx"):
        cells = " / ".join(_cell(r2[f"{name}_added"][key], 2) for key in PERCENTILES)
        lines.append(f"  {name + ' added':<34} {cells}")
    lag = " / ".join(_cell(r2["generator_lag"][key], 2) for key in PERCENTILES)
    lines.append(f"  {'generator lag (its own)':<34} {lag}")
    return lines


def _saga_sections(r3: dict[str, Any], r4: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "R3 saga throughput (orders reaching a final state per second)",
        f"  {'saga, sustained':<34} {_cell(r3['saga'], 1)}",
        f"  {'raw Postgres transactions/s':<34} {_cell(r3['raw_transactions_per_second'])}",
        f"  {'raw / 6 transactions per order':<34} {_cell(r3['raw_per_order'], 1)}",
        f"  {'saga / raw':<34} {_cell(r3['ratio'], 2)}",
        "",
        f"R4 saga latency at {r4['rate']:.1f} orders/s, POST to final event (ms: p50 / p99 / p99.9)",
        f"  {'saga':<34} " + " / ".join(_cell(r4["latency"][key], 1) for key in PERCENTILES),
        f"  {'POST answered (part of it)':<34} "
        + " / ".join(_cell(r4["post_answered"][key], 1) for key in PERCENTILES),
        f"  {'sum of parts (p50)':<34} {r4['parts_sum']:.1f}  = "
        + " + ".join(f"{name} {value:.1f}" for name, value in r4["parts_p50"].items()),
        f"  {'saga p50 / sum of parts':<34} {_cell(r4['ratio_p50_to_parts'], 2)}",
    ]
    wake = r4.get("relay_wake")
    if wake:
        stats = wake["all"]
        lines.append(
            f"  {'relay wake, commit to publish':<34} p50 {stats['p50']:.2f} / p99 {stats['p99']:.2f} / "
            f"max {stats['max']:.2f} ms over {stats['count']:.0f} events"
        )
    return lines


def _relay_section(r5: dict[str, Any]) -> list[str]:
    return [
        "",
        f"R5 relay ({r5['events_per_round']} events per round; events/s)",
        f"  {'outbox relay':<34} {_cell(r5['relay'])}",
        f"  {'raw aio-pika, same confirms':<34} {_cell(r5['raw_aio_pika'])}",
        f"  {'relay / raw':<34} {_cell(r5['ratio'], 2)}",
    ]


def _memory_section(memory: dict[str, Any]) -> list[str]:
    phases = list(memory["peaks"])
    lines = ["", "Memory, MB resident: idle / peak under " + " / ".join(phases) + " / idle after load"]
    for name in (*SERVICES, "nginx"):
        figures: list[float] = [memory["idle"].get(name, math.nan)]
        figures += [memory["peaks"][phase].get(name, math.nan) for phase in phases]
        figures.append(memory["idle_after_load"].get(name, math.nan))
        lines.append(f"  {name:<34} " + " / ".join(f"{figure:.0f}" for figure in figures))
    return lines


def _cpu_section(results: dict[str, Any]) -> list[str]:
    nproc = results["machine"]["nproc"]
    lines = ["", f"CPU, cores busy (of {nproc}): whole machine / this benchmark's processes"]
    for phase, cpu in results.get("cpu_by_phase", {}).items():
        lines.append(
            f"  {phase:<34} {cpu['machine_busy_cores']:.2f} / {cpu['bench_tree_cores']:.2f}  "
            "(the rest: Postgres, RabbitMQ and anything else running)"
        )
    return lines


def _targets_section(targets: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Targets (ratios from this run; measured, not asserted)"]
    for target in targets:
        verdict = "PASS" if target["pass"] else "MISS"
        value, (low, high) = target["value"], target["spread"]
        lines.append(
            f"  {target['id']:<4} {target['what']:<42} {value:8.2f} [{low:.2f}-{high:.2f}]  "
            f"target {target['target']:<8} {verdict}"
        )
    return lines


def _profile_section(profile: dict[str, Any] | None) -> list[str]:
    if profile is None:
        return []
    lines = ["", "Profiles (py-spy, share of active samples)"]
    for name, summary in profile.items():
        lines.append(f"  {name}: busy {summary['busy_fraction']}")
        for function, share in summary["self"][:12]:
            lines.append(f"    self {share:5.1f}%  {function}")
    return lines


def _bars(axis: Any, labels: list[str], summaries: list[dict[str, Any]], colours: list[str]) -> None:
    medians = [summary["median"] for summary in summaries]
    below = [summary["median"] - summary["min"] for summary in summaries]
    above = [summary["max"] - summary["median"] for summary in summaries]
    axis.bar(labels, medians, color=colours, yerr=[below, above], capsize=4)
    for position, median in enumerate(medians):
        axis.annotate(
            f"{median:.0f}" if median >= 10 else f"{median:.2f}",
            (position, median),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 3),
            textcoords="offset points",
        )


def chart(results: dict[str, Any], path: Path) -> None:
    r1, r2 = results["r1_gateway_throughput"], results["r2_gateway_latency"]
    r3, r4, r5 = results["r3_saga_throughput"], results["r4_saga_latency"], results["r5_relay"]
    machine = results["machine"]
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    grey, blue, orange = "#9e9e9e", "#4c72b0", "#dd8452"

    axis = axes[0][0]
    _bars(
        axis,
        ["direct", "nginx", "gateway"],
        [r1["throughput"][name] for name in ("direct", "nginx", "gateway")],
        [grey, blue, orange],
    )
    axis.set_title(
        f"R1 GET {CURRENT_PREFIX}/orders/{{id}}: req/s\n"
        f"gateway/nginx {r1['ratio_gateway_nginx']['median']:.2f} (target 0.5)"
    )

    axis = axes[0][1]
    keys = ("p50", "p99", "p99.9")
    width = 0.27
    for offset, (name, colour) in enumerate((("direct", grey), ("nginx", blue), ("gateway", orange))):
        values = [r2["latency"][name][key]["median"] for key in keys]
        axis.bar(
            [index + (offset - 1) * width for index in range(len(keys))],
            values,
            width,
            label=name,
            color=colour,
        )
    axis.set_xticks(range(len(keys)), keys)
    axis.set_ylabel("ms")
    axis.legend(fontsize=8)
    added = r2["gateway_added"]["p99"]["median"]
    axis.set_title(
        f"R2 latency at {r2['rate']:.0f} req/s (open loop)\ngateway adds {added:.2f} ms at p99 (target 1)"
    )

    axis = axes[0][2]
    _bars(axis, ["saga", "raw Postgres / 6"], [r3["saga"], r3["raw_per_order"]], [orange, grey])
    axis.set_ylabel("orders/s")
    axis.set_title(f"R3 saga throughput: orders/s\nsaga/raw {r3['ratio']['median']:.2f} (target 0.5)")

    axis = axes[1][0]
    values = [r4["latency"][key]["median"] for key in keys]
    axis.bar(keys, values, color=orange)
    axis.axhline(r4["parts_sum"], color=grey, linestyle="-", label=f"sum of parts {r4['parts_sum']:.1f} ms")
    axis.axhline(1.5 * r4["parts_sum"], color=grey, linestyle=":", label="1.5 x sum (target for p50)")
    axis.set_ylabel("ms")
    axis.legend(fontsize=8)
    axis.set_title(
        f"R4 saga latency at {r4['rate']:.1f} orders/s\n"
        f"p50/parts {r4['ratio_p50_to_parts']['median']:.2f} (target 1.5)"
    )

    axis = axes[1][1]
    _bars(axis, ["outbox relay", "raw aio-pika"], [r5["relay"], r5["raw_aio_pika"]], [orange, grey])
    axis.set_ylabel("events/s")
    axis.set_title(
        f"R5 publishing with confirms: events/s\nrelay/raw {r5['ratio']['median']:.2f} (target 0.8)"
    )

    axis = axes[1][2]
    memory = results["memory"]
    names = [*SERVICES, "nginx"]
    under_load = {name: max(peaks.get(name, 0.0) for peaks in memory["peaks"].values()) for name in names}
    series = [
        ("idle", memory["idle"]),
        ("peak under load", under_load),
        ("idle after load", memory["idle_after_load"]),
    ]
    width = 0.8 / len(series)
    for offset, (label, values_by_name) in enumerate(series):
        axis.bar(
            [index + offset * width - 0.4 + width / 2 for index in range(len(names))],
            [values_by_name.get(name, 0.0) for name in names],
            width,
            label=label,
        )
    axis.axhline(MEMORY_LIMIT_MB, color="red", linestyle=":", label="80 MB (idle target)")
    axis.set_xticks(range(len(names)), [name.replace("_service", "") for name in names])
    axis.set_ylabel("MB resident")
    axis.set_ylim(0, 110)  # room above the 80 MB line for the legend
    axis.legend(fontsize=8, loc="upper center", ncol=2)
    axis.set_title("Memory per process")

    figure.suptitle(
        f"eda-reference benchmark ({results['mode']}, median and min-max of "
        f"{results['settings']['rounds']} rounds): {machine['nproc']} x {machine['cpu_model']}, "
        f"Linux {machine['kernel']}, Python {machine['python']}, "
        f"PostgreSQL {machine['postgres'].split(' ')[0]}, RabbitMQ {machine['rabbitmq']}, "
        f"nginx {machine['nginx']}; load average {machine['load_average_at_start'][0]:.1f} at start",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
