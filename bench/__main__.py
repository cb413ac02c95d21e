"""`python -m bench`: the side-by-side benchmark (see bench/harness.py and docs/performance.md)."""

import argparse
import asyncio
import logging
import signal
from pathlib import Path

import structlog
import uvloop

from bench.harness import SECTIONS, Settings, run, sections_to_run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="seconds, tiny load: proves the harness runs")
    parser.add_argument("--rounds", type=int, help="rounds of every measurement (default 5; smoke 1)")
    parser.add_argument("--duration", type=float, help="seconds measured per run (default 10; smoke 1)")
    parser.add_argument("--output", type=Path, help="the JSON (default bench/results/latest.json)")
    parser.add_argument("--chart", type=Path, help="the PNG (default docs/images/bench.png)")
    parser.add_argument("--wrk-cpus", help="pin wrk with taskset -c (default: not pinned)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also profile with py-spy, into DIR")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        metavar="SECONDS",
        help="first wait, up to SECONDS, until other work leaves the CPUs idle (for published figures)",
    )
    parser.add_argument(
        "--only",
        metavar="SECTIONS",
        help=f"run only these sections, comma-separated, of {', '.join(SECTIONS)} (r2 brings r1, r4 r3 along:"
        " their rates come from there; r3-cluster runs in r3's rounds); the JSON and chart then hold only"
        " those (default: all; with --smoke, all but r3-cluster)",
    )
    arguments = parser.parse_args()
    try:
        sections = sections_to_run(arguments.only, smoke=arguments.smoke)
    except ValueError as error:
        parser.error(str(error))
    # The harness applies the services' migrations with shared.db, which logs each one: only warnings
    # belong between the harness's own progress lines.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    settings = Settings.for_mode(
        smoke=arguments.smoke,
        rounds=arguments.rounds,
        duration=arguments.duration,
        wrk_cpus=arguments.wrk_cpus,
        profile_dir=arguments.profile,
        wait_quiet=arguments.wait_quiet,
        sections=sections,
    )
    # A smoke run, or a run of some sections only, never overwrites the published figures.
    default_name = "smoke" if arguments.smoke else "partial" if arguments.only else "latest"
    output = arguments.output or ROOT / "bench" / "results" / f"{default_name}.json"
    published_chart = ROOT / "docs" / "images" / "bench.png"
    chart = arguments.chart or (
        published_chart if default_name == "latest" else ROOT / "bench" / "results" / f"{default_name}.png"
    )

    async def main_task() -> None:
        # SIGTERM as Ctrl-C: cancel, so that every `finally` removes what the run created.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await run(settings, output, chart)

    try:
        uvloop.run(main_task())
    except (KeyboardInterrupt, asyncio.CancelledError):
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
