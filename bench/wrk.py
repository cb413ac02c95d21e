"""wrk from Debian's package: the closed-loop generator for maximum throughput (R1)."""

import asyncio
import dataclasses
import re
from pathlib import Path

# The token goes in a header, which wrk's command line cannot set per request without a script.
SCRIPT = 'wrk.method = "GET"\nwrk.headers["Authorization"] = "Bearer {token}"\n'


@dataclasses.dataclass(frozen=True)
class WrkResult:
    requests_per_second: float
    requests: int
    non_2xx: int
    socket_errors: int
    output: str

    @property
    def clean(self) -> bool:
        return self.non_2xx == 0 and self.socket_errors == 0 and self.requests > 0


def parse(output: str) -> WrkResult:
    """Read wrk's summary; a line it leaves out (no errors) counts as zero."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return WrkResult(
        requests_per_second=float(rate.group(1)) if rate else 0.0,
        requests=int(total.group(1)) if total else 0,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(count) for count in errors.groups()) if errors else 0,
        output=output,
    )


async def run_wrk(
    binary: str,
    url: str,
    *,
    token: str,
    script_dir: Path,
    threads: int,
    connections: int,
    duration: float,
    cpus: str | None = None,
) -> WrkResult:
    script = script_dir / "auth.lua"
    if not script.exists():
        script.write_text(SCRIPT.format(token=token))
    command = [
        binary,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    if cpus:
        command = ["taskset", "-c", cpus, *command]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {text}")
    return parse(text)
