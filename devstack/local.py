"""A server run from this machine's binaries as a private instance: its own directory, ports and
process group, so that stopping, killing or pausing it reaches every process it has and nothing else.

Each instance lives in a directory named after the process that started it. A run killed before it
could clean up leaves its directory behind; the next run finds it (its owner is gone), kills what is
left of its servers and removes it.
"""

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

STOP_DEADLINE = 30.0


def instances_root() -> Path:
    """Where private instances live: one folder per user, traversable by the account a server runs as
    (Postgres refuses to run as root, so root runs it as another user)."""
    root = Path(tempfile.gettempdir()) / f"eda-devstack-{os.getuid()}"
    root.mkdir(mode=0o711, exist_ok=True)
    root.chmod(0o711)
    return root


def new_instance_dir(name: str) -> Path:
    directory = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-{name}-", dir=instances_root()))
    directory.chmod(0o711)
    return directory


def remove_abandoned_instances() -> list[Path]:
    """Kill and remove the private instances of runs whose process is gone; return their folders."""
    removed = []
    for directory in instances_root().iterdir():
        owner, _, _ = directory.name.partition("-")
        if not owner.isdigit() or _alive(int(owner)):
            continue
        group_file = directory / "process-group"
        if group_file.exists():
            with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
                os.killpg(int(group_file.read_text()), signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def unprivileged_account() -> str | None:
    """The account a server that refuses root (Postgres) runs as when we are root; None when we are
    not root. `postgres` where Debian's package made it, else `nobody`."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root, and there is no unprivileged account (postgres, nobody) to run as")


async def run(
    command: Sequence[str], *, what: str, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> str:
    """Run a tool (initdb, rabbitmqctl, iptables, ...) to its end; what it printed, or a RuntimeError
    that starts with `what` and carries it."""
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=cwd,
        env=None if env is None else dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    printed = output.decode(errors="replace")
    if process.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{printed}")
    return printed


def as_account(account: str | None, command: Sequence[str]) -> list[str]:
    """`command`, run as `account` (None: as ourselves). setpriv execs the command in its own place,
    so the process we start is the server itself."""
    if account is None:
        return list(command)
    return ["setpriv", f"--reuid={account}", f"--regid={account}", "--init-groups", *command]


def give_to(account: str | None, *paths: Path) -> None:
    if account is None:
        return
    entry = pwd.getpwnam(account)
    for path in paths:
        os.chown(path, entry.pw_uid, entry.pw_gid)


class ProcessGroup:
    """A server's processes, started in a session of their own so that a signal reaches them all."""

    def __init__(self, directory: Path, log: Path) -> None:
        self.directory = directory
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, command: Sequence[str], environment: Mapping[str, str], cwd: Path) -> None:
        with self.log.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                *command,
                cwd=cwd,
                env=dict(environment),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        (self.directory / "process-group").write_text(str(self.process.pid))

    def send(self, number: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, number)

    async def stop(self, number: int = signal.SIGTERM) -> None:
        """Ask the server to stop with signal `number`; kill it if it has not within the deadline."""
        if not self.running:
            return
        assert self.process is not None
        self.send(number)
        try:
            await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)
        except TimeoutError:
            await self.kill()
        # Helpers it started (Erlang's port programs, say) may outlive the leader by a moment.
        self.send(signal.SIGKILL)

    async def kill(self) -> None:
        if self.process is None:
            return
        self.send(signal.SIGCONT)  # a paused process group dies just as well, but say it plainly
        self.send(signal.SIGKILL)
        await self.process.wait()

    def pause(self) -> None:
        self.send(signal.SIGSTOP)

    def resume(self) -> None:
        self.send(signal.SIGCONT)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def find_binary(name: str, *, override: str | None, candidates: Sequence[str]) -> Path | None:
    """A server binary: in the directory `override` names, else in the first candidate directory that
    has it (Debian keeps Postgres's under /usr/lib/postgresql/N/bin), else on the PATH."""
    if override:
        path = Path(override) / name
        return path if path.exists() else None
    for directory in candidates:
        path = Path(directory) / name
        if path.exists():
            return path
    found = shutil.which(name)
    return Path(found) if found else None
