"""python -m chaos --duration SECONDS [--seed N] [--rate R]: a chaos run on servers of its own.

It prints the seed first (give it again to replay the same faults), a line per fault as it is
injected, and a summary at the end; it exits 1 if anything was lost or doubled, an invariant broke,
or the system never settled. Its servers are the ones the tests would use (DEVSTACK_SERVERS, see
devstack/servers.py), never servers of yours: it restarts and kills them. The processes' logs are
kept when the run fails, and the folder is named.
"""

import argparse
import asyncio
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from chaos.run import Settings, Summary, chaos_run
from devstack.servers import NoServers, choose, started


async def main_async(settings: Settings, work_dir: Path) -> Summary:
    choice = await choose()
    if not choice.can_inject_faults:
        raise NoServers("the chaos run restarts and kills its servers: it never runs on servers of yours")
    print(f"servers: {choice.describe()}", flush=True)
    async with started(choice) as servers:
        print(servers.describe(), flush=True)
        return await chaos_run(servers, work_dir, settings, out=lambda line: print(line, flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, required=True, help="seconds of load and faults")
    parser.add_argument(
        "--seed", type=int, default=None, help="the faults' and the load's seed (random if none)"
    )
    parser.add_argument(
        "--rate", type=float, default=Settings.rate, help="turns per second (default: %(default)s)"
    )
    arguments = parser.parse_args(argv)
    seed = arguments.seed if arguments.seed is not None else secrets.randbelow(2**31)
    settings = Settings(duration=arguments.duration, seed=seed, rate=arguments.rate)
    print(f"seed {seed} (replay: {settings.replay()})", flush=True)
    work_dir = Path(tempfile.mkdtemp(prefix="eda-chaos-"))
    passed = False
    try:
        passed = asyncio.run(main_async(settings, work_dir)).passed
    except NoServers as reason:
        print(f"python -m chaos: {reason}", file=sys.stderr)
        return 2
    finally:
        if passed:
            shutil.rmtree(work_dir, ignore_errors=True)
        else:
            print(f"the processes' logs are kept in {work_dir}", flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
