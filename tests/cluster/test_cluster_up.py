"""`make cluster-up` and `make cluster-down` (python -m devstack), as a user runs them: the clusters
and the system on them start in the background until both gateways are ready, the demo's tour it
suggests runs as printed, a second cluster-up only says where it is, and cluster-down removes
everything the first started."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from devstack.local import instances_root
from devstack.waiting import eventually

ROOT = Path(__file__).resolve().parents[2]


def python_module(module: str, *arguments: str, cluster_dir: Path) -> subprocess.CompletedProcess[str]:
    """`python -m module arguments`, as `make` runs it, with cluster-up's state in `cluster_dir`."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=ROOT,
        env={**os.environ, "DEVSTACK_CLUSTER_DIR": str(cluster_dir)},
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def devstack(command: str, cluster_dir: Path) -> subprocess.CompletedProcess[str]:
    return python_module("devstack", command, cluster_dir=cluster_dir)


async def test_cluster_up_runs_the_system_on_the_clusters_and_cluster_down_removes_it(tmp_path: Path) -> None:
    before = set(instances_root().iterdir())
    up = devstack("cluster-up", tmp_path)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "The system is up on the clusters" in up.stdout, up.stdout
        state = orjson.loads((tmp_path / "state.json").read_bytes())
        assert "three nodes behind HAProxy" in state["summary"]
        addresses = [word.rstrip(",") for word in up.stdout.split() if word.startswith("http://127.0.0.1:")]
        gateways = addresses[:2]  # the summary names the two gateways first
        async with aiohttp.ClientSession() as http:
            for gateway in gateways:

                async def ready(url: str = gateway) -> bool:
                    async with http.get(f"{url}/readyz") as response:
                        return response.status == 200

                await eventually(ready, within=30, what=f"{gateway} ready")
        # The tour it suggests runs as printed, the flow page's steps included (the firehose is per node).
        suggestion = "Try: make demo DEMO_ARGS="
        (suggested,) = [line for line in up.stdout.splitlines() if line.startswith(suggestion)]
        (demo_arguments,) = shlex.split(suggested.removeprefix(suggestion))
        tour = python_module("demo", *demo_arguments.split(), cluster_dir=tmp_path)
        assert tour.returncode == 0, tour.stdout[-3000:] + tour.stderr[-3000:]
        again = devstack("cluster-up", tmp_path)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == state["summary"], "a second cluster-up only says where the first is"
    finally:
        down = devstack("cluster-down", tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped and removed" in down.stdout
    assert not (tmp_path / "state.json").exists()
    left = set(instances_root().iterdir()) - before
    assert not left, f"cluster-down left {sorted(left)}"
    assert devstack("cluster-down", tmp_path).stdout.strip() == "no cluster is up"
