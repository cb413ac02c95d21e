"""A Postgres server for a run of the tests, the benchmark or the demo.

Three kinds, one interface: a private instance from this machine's binaries (`initdb` in a folder of
its own, on a port of its own), a container, or a server of yours that you name explicitly
(`DEVSTACK_POSTGRES_DSN`), which is never restarted, killed or paused.
"""

import abc
import asyncio
import os
import shutil
import signal
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, urlsplit

import asyncpg

from devstack import docker
from devstack.local import (
    ProcessGroup,
    as_account,
    find_binary,
    give_to,
    new_instance_dir,
    run,
    unprivileged_account,
)
from devstack.ports import free_port
from devstack.waiting import eventually

READY_DEADLINE = 60.0
# For a test run, not for production: durability across a power cut is not what the tests check (a
# crash of Postgres is a clean kill, which fsync does not enter), and without it a run is faster. The
# benchmark asks for Postgres as it ships instead (`tuned_for_tests=False`).
TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "300"}
SHIPPED_SETTINGS = {"max_connections": "300"}


class Postgres(abc.ABC):
    """A Postgres server: a superuser to make and drop databases with, and its life cycle."""

    kind: ClassVar[str]
    can_inject_faults: ClassVar[bool] = True
    host = "127.0.0.1"

    def __init__(self, *, port: int, superuser: str = "postgres", password: str = "") -> None:
        self.port = port
        self.superuser = superuser
        self.password = password
        self.version = ""

    def dsn(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> str:
        user = user or self.superuser
        password = self.password if password is None else password
        credentials = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(database, safe='')}"

    def libpq_target(self) -> dict[str, str]:
        """Where psql finds the server, as libpq's environment variables."""
        return {"PGHOST": self.host, "PGPORT": str(self.port)}

    @property
    def admin_dsn(self) -> str:
        return self.dsn()

    async def create_database(self, prefix: str) -> str:
        """An empty database of a new name; returns the superuser's DSN of it."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.dsn(name)

    async def drop_databases(self, names: list[str]) -> None:
        if not names:
            return
        admin = await asyncpg.connect(self.admin_dsn)
        try:
            for name in names:
                await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def run_script(self, script: Path, environment: Mapping[str, str]) -> str:
        """Run a bash script that talks to this server with psql as the superuser (such as
        deploy/postgres/create-databases.sh); return what it printed."""
        settings = {
            **self.libpq_target(),
            "PGPASSWORD": self.password,
            "POSTGRES_USER": self.superuser,
            "POSTGRES_DB": "postgres",
            "PATH": self._psql_path(),
        }
        if shutil.which("psql", path=settings["PATH"]) is None:
            raise RuntimeError("psql is missing: install PostgreSQL's client (Debian: postgresql-client)")
        return await run(
            ["bash", str(script)], what=script.name, env={**_clean_environment(), **settings, **environment}
        )

    def _psql_path(self) -> str:
        return os.environ.get("PATH", "")

    async def wait_ready(self, deadline: float = READY_DEADLINE) -> None:
        async def answers() -> bool:
            try:
                connection = await asyncpg.connect(self.admin_dsn, timeout=2)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                return False
            try:
                self.version = str(await connection.fetchval("SHOW server_version")).split()[0]
            finally:
                await connection.close()
            return True

        await eventually(answers, within=deadline, interval=0.1, what=f"{self.describe()} ready")

    @abc.abstractmethod
    def describe(self) -> str: ...

    @abc.abstractmethod
    async def start(self) -> None:
        """Start the server (again), and return once it accepts connections."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """A fast shutdown: clients are disconnected, in-flight transactions roll back."""

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @abc.abstractmethod
    async def kill(self) -> None:
        """SIGKILL: a crash. `start` brings it back through crash recovery."""

    @abc.abstractmethod
    async def pause(self) -> None:
        """Freeze every process of the server: connections stay open and nothing answers."""

    @abc.abstractmethod
    async def resume(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop it for good and remove what it kept (its data included)."""


class PrivatePostgres(Postgres):
    """A private instance: `initdb` in a folder of its own, `postgres` on a free port of loopback."""

    kind = "private instance"

    def __init__(self, bin_dir: Path, *, settings: Mapping[str, str]) -> None:
        super().__init__(port=free_port())
        self.bin_dir = bin_dir
        self.settings = dict(settings)
        self.directory = new_instance_dir("postgres")
        self.data = self.directory / "data"
        self.account = unprivileged_account()  # initdb and postgres refuse to run as root
        self.processes = ProcessGroup(self.directory, self.directory / "postgres.log")

    def describe(self) -> str:
        return f"PostgreSQL {self.version or '?'}, private instance on port {self.port} ({self.directory})"

    async def start(self) -> None:
        if not self.data.exists():
            await self._initdb()
        options = [f"--{name.replace('_', '-')}={value}" for name, value in self.settings.items()]
        command = [
            str(self.bin_dir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-k",
            str(self.directory),  # its Unix socket, away from the machine's own in /var/run/postgresql
            "--listen-addresses=127.0.0.1",
            *options,
        ]
        await self.processes.start(as_account(self.account, command), _clean_environment(), self.directory)
        try:
            await self.wait_ready()
        except AssertionError as error:
            raise RuntimeError(f"{error}\n{self.processes.log_tail()}") from None

    async def _initdb(self) -> None:
        self.processes.log.touch()
        give_to(self.account, self.directory, self.processes.log)
        command = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "--username=postgres",
            "--auth=trust",  # loopback only, a throwaway instance
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        ]
        environment = _clean_environment()
        await run(as_account(self.account, command), what="initdb", cwd=self.directory, env=environment)

    async def stop(self) -> None:
        await self.processes.stop(signal.SIGINT)  # SIGINT is Postgres's fast shutdown

    async def kill(self) -> None:
        await self.processes.kill()

    async def pause(self) -> None:
        self.processes.pause()

    async def resume(self) -> None:
        self.processes.resume()

    async def close(self) -> None:
        await self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)

    def _psql_path(self) -> str:
        # Its own psql first: the server's version, and there even when no client is on the PATH.
        return f"{self.bin_dir}{os.pathsep}{super()._psql_path()}"


class ContainerPostgres(Postgres):
    """A container of a Postgres image (the official one, or a local stand-in with its contract)."""

    kind = "container"

    def __init__(self, image: str, *, settings: Mapping[str, str]) -> None:
        super().__init__(port=free_port(), password="devstack")
        self.image = image
        self.settings = dict(settings)
        self.name = f"eda-devstack-postgres-{uuid.uuid4().hex[:8]}"
        self.created = False

    def describe(self) -> str:
        return f"PostgreSQL {self.version or '?'}, container {self.name} of {self.image} on port {self.port}"

    async def start(self) -> None:
        if self.created:
            await docker.docker("start", self.name)
        else:
            options = [
                argument for name, value in self.settings.items() for argument in ("-c", f"{name}={value}")
            ]
            await docker.run_container(
                self.image,
                name=self.name,
                ports={5432: self.port},
                environment={"POSTGRES_PASSWORD": self.password},
                command=["postgres", *options],
            )
            self.created = True
        await self.wait_ready()

    async def stop(self) -> None:
        await docker.docker("stop", self.name)

    async def kill(self) -> None:
        await docker.docker("kill", self.name)

    async def pause(self) -> None:
        await docker.docker("pause", self.name)

    async def resume(self) -> None:
        await docker.docker("unpause", self.name)

    async def close(self) -> None:
        if self.created:
            await docker.remove_container(self.name)

    async def run_script(self, script: Path, environment: Mapping[str, str]) -> str:
        # Inside the container, where psql is: the machine may have none.
        variables = [
            argument for key, value in environment.items() for argument in ("--env", f"{key}={value}")
        ]
        commands = await asyncio.to_thread(script.read_bytes)
        return await docker.docker(
            "exec", "--interactive", *variables, self.name, "bash", "-s", stdin=commands
        )


class ExternalPostgres(Postgres):
    """A server of yours, named by `DEVSTACK_POSTGRES_DSN` (a superuser's DSN): used for databases of
    the run's own, which are dropped afterwards, and never restarted, killed or paused."""

    kind = "external server"
    can_inject_faults = False

    def __init__(self, admin_dsn: str) -> None:
        parts = urlsplit(admin_dsn)
        super().__init__(
            port=parts.port or 5432, superuser=parts.username or "postgres", password=parts.password or ""
        )
        self.host = parts.hostname or "127.0.0.1"

    def describe(self) -> str:
        return f"PostgreSQL {self.version or '?'}, yours at {self.host}:{self.port} (DEVSTACK_POSTGRES_DSN)"

    async def start(self) -> None:
        await self.wait_ready(deadline=10)

    async def stop(self) -> None:
        raise RuntimeError("devstack never stops a server of yours")

    async def kill(self) -> None:
        raise RuntimeError("devstack never kills a server of yours")

    async def pause(self) -> None:
        raise RuntimeError("devstack never pauses a server of yours")

    async def resume(self) -> None:
        raise RuntimeError("devstack never pauses a server of yours")

    async def close(self) -> None:
        return None


def find_postgres_binaries(override: str | None) -> Path | None:
    """The folder with `initdb` and `postgres`: DEVSTACK_POSTGRES_BIN_DIR, else Debian's newest
    /usr/lib/postgresql/N/bin, else wherever `initdb` is on the PATH (Homebrew, Postgres.app)."""
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_version, reverse=True)
    found = find_binary("initdb", override=override, candidates=[str(path) for path in debian])
    return found.resolve().parent if found else None


def _major_version(path: Path) -> float:
    try:
        return float(path.parent.name)
    except ValueError:
        return 0.0


def _clean_environment() -> dict[str, str]:
    """The environment a private server starts with: ours, without what would point it elsewhere."""
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}
