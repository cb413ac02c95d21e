"""Sampling profiles of the services under load, with py-spy (optional: `--profile DIR`).

py-spy samples from outside the process (no code change, little overhead with --nonblocking);
profiled rounds are extra rounds, never the measured ones.
"""

import asyncio
import collections
import re
import sys
from pathlib import Path
from typing import Any

from bench.machine import find_tool

SAMPLE_RATE = 200
_LINE = re.compile(r"^(?P<stack>.*) (?P<count>\d+)$")
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")


def py_spy() -> str | None:
    return find_tool("py-spy") or (
        str(Path(sys.executable).parent / "py-spy")
        if (Path(sys.executable).parent / "py-spy").exists()
        else None
    )


async def start_recording(pid: int, output: Path, duration: float) -> asyncio.subprocess.Process:
    binary = py_spy()
    if binary is None:
        raise RuntimeError("py-spy is not installed: pip install py-spy")
    return await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(max(1, round(duration))),
        "--rate",
        str(SAMPLE_RATE),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


def _frame(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    path = match["file"]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match['function']} ({path})"


def summarize(collapsed: Path, duration: float, top: int = 25) -> dict[str, Any]:
    """Self and inclusive shares of the active samples, by function (py-spy leaves idle out)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        count = int(match["count"])
        frames = [_frame(frame) for frame in match["stack"].split(";")]
        # The first frame names the thread (`process 123:"python -m gateway"`); skip it.
        frames = [frame for frame in frames if not frame.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    possible = duration * SAMPLE_RATE
    return {
        "active_samples": total,
        "busy_fraction": round(total / possible, 3) if possible else None,
        "self": [(name, round(100 * count / total, 1)) for name, count in own.most_common(top)]
        if total
        else [],
        "inclusive": [(name, round(100 * count / total, 1)) for name, count in inclusive.most_common(top)]
        if total
        else [],
    }
