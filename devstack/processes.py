"""One of the system's processes (`python -m gateway`, `python -m users_service`, ...), started as
`make dev` starts it, with the environment it is given, its output in a log file of its own."""

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

import aiohttp

from devstack.waiting import eventually

ROOT = Path(__file__).resolve().parents[1]
STOP_DEADLINE = 20.0
READY_DEADLINE = 60.0


@dataclasses.dataclass
class ServiceProcess:
    """A process of the system: `module` run with `env` on top of ours; its HTTP_PORT must be in `env`."""

    name: str
    module: str
    env: dict[str, str]
    log: Path
    process: asyncio.subprocess.Process | None = None

    @property
    def port(self) -> int:
        return int(self.env["HTTP_PORT"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The pid while it runs, else None."""
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def log_text(self, since: int = 0) -> str:
        if not self.log.exists():
            return ""
        with self.log.open("rb") as handle:
            handle.seek(since)
            return handle.read().decode(errors="replace")

    async def start(self, *, ready_path: str = "/readyz", ready_within: float = READY_DEADLINE) -> None:
        """Start it and return once `ready_path` answers 200 (/healthz for a process that is up but,
        on purpose, not ready). A restarted process goes on with the same log."""
        with self.log.open("ab") as sink:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                self.module,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=sink,
                stderr=asyncio.subprocess.STDOUT,
            )
        try:
            await self.wait_ready(ready_path, ready_within)
        except BaseException:
            await self.kill()  # never left running behind a failed start
            raise

    async def wait_ready(self, path: str = "/readyz", within: float = READY_DEADLINE) -> None:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if self.process is None or self.process.returncode is not None:
                    raise AssertionError(f"{self.name} exited at start:\n{self.log_text()[-4000:]}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{self.url}{path}") as response:
                        return response.status == 200
                return False

            await eventually(ready, within=within, interval=0.1, what=f"{self.name}: {path} answers 200")

    async def stop(self) -> int:
        """SIGTERM, then wait for a clean exit; the exit code tells whether the shutdown was graceful.
        A process that ignores SIGTERM for STOP_DEADLINE seconds is killed, and that is an error."""
        self.terminate()
        return await self.stopped()

    def terminate(self) -> None:
        """SIGTERM, without waiting: the process stops taking work and finishes what it holds."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)

    async def stopped(self) -> int:
        """Wait for the exit of a process told to stop; its exit code (see `stop`)."""
        if self.process is None:
            return 0
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), STOP_DEADLINE)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
                raise AssertionError(f"{self.name} ignored SIGTERM for {STOP_DEADLINE} s") from None
        code = self.process.returncode
        assert code is not None
        return code

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no flush, no ack: a crash."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)  # a paused process dies just as well; be plain
            self.process.kill()
            await self.process.wait()

    def pause(self) -> None:
        """SIGSTOP: alive, connected, and answering nothing (a process stuck in a long GC or swap)."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGCONT)


def service_process(name: str, module: str, env: Mapping[str, str], log_dir: Path) -> ServiceProcess:
    if "HTTP_PORT" not in env:
        # Its default is `make dev`'s port: the process would meet a developer's own, or nothing.
        raise ValueError(f"{name}: a process is started on a port of its own; give it HTTP_PORT")
    return ServiceProcess(name=name, module=module, env=dict(env), log=log_dir / f"{name}.log")
