"""Which Postgres and RabbitMQ a run uses, chosen once and said at the start.

    DEVSTACK_SERVERS=auto        (the default) yours if you name them, else containers where a Docker
                                 engine answers and has the images, else private instances
    DEVSTACK_SERVERS=containers  containers of the images below
    DEVSTACK_SERVERS=private     private instances of this machine's binaries
    DEVSTACK_SERVERS=external    yours: DEVSTACK_POSTGRES_DSN (a superuser's) and DEVSTACK_RABBITMQ_URL
                                 (an administrator's; DEVSTACK_RABBITMQ_MANAGEMENT_URL for its HTTP API)

Images: DEVSTACK_POSTGRES_IMAGE and DEVSTACK_RABBITMQ_IMAGE, else the ones docker-compose.yml ships,
else local stand-ins of them (tests/compose/build-standins.sh) on a machine that reaches no registry.
Binaries: DEVSTACK_POSTGRES_BIN_DIR and DEVSTACK_RABBITMQ_BIN_DIR, else where the system keeps them.

Servers of yours are used only when named, and never restarted, killed or paused: the fault tests
that would do so are skipped, with the reason.
"""

import asyncio
import contextlib
import dataclasses
import os
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from devstack import docker
from devstack.local import remove_abandoned_instances
from devstack.postgres import (
    SHIPPED_SETTINGS,
    TEST_SETTINGS,
    ContainerPostgres,
    ExternalPostgres,
    Postgres,
    PrivatePostgres,
    find_postgres_binaries,
)
from devstack.rabbitmq import (
    ContainerRabbitMQ,
    ExternalRabbitMQ,
    PrivateRabbitMQ,
    RabbitMQ,
    find_rabbitmq_binaries,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MODES = ("auto", "containers", "private", "external")
STANDIN_LABEL = "org.eda-reference.standin.inputs"


class NoServers(RuntimeError):
    """No way to have the servers a run needs; the message says what to install or set."""


@dataclasses.dataclass(frozen=True)
class Choice:
    """How a run gets its servers, and why that way (said in the first lines of the run)."""

    kind: str  # containers, private or external
    reason: str
    postgres_image: str = ""
    rabbitmq_image: str = ""
    postgres_bin_dir: Path | None = None
    rabbitmq_bin_dir: Path | None = None

    @property
    def can_inject_faults(self) -> bool:
        return self.kind != "external"

    def describe(self) -> str:
        if self.kind == "containers":
            return f"containers of {self.postgres_image} and {self.rabbitmq_image} ({self.reason})"
        if self.kind == "private":
            return f"private instances of {self.postgres_bin_dir} and {self.rabbitmq_bin_dir} ({self.reason})"
        return f"your servers, named by DEVSTACK_POSTGRES_DSN and DEVSTACK_RABBITMQ_URL ({self.reason})"


@dataclasses.dataclass
class Servers:
    """The Postgres and RabbitMQ of a run."""

    choice: Choice
    postgres: Postgres
    rabbitmq: RabbitMQ

    @property
    def can_inject_faults(self) -> bool:
        return self.postgres.can_inject_faults and self.rabbitmq.can_inject_faults

    def describe(self) -> str:
        return f"{self.postgres.describe()}\n{self.rabbitmq.describe()}"


async def choose(environ: Mapping[str, str] | None = None) -> Choice:
    environ = os.environ if environ is None else environ
    mode = environ.get("DEVSTACK_SERVERS", "auto") or "auto"
    if mode not in MODES:
        raise NoServers(f"DEVSTACK_SERVERS={mode!r}: choose one of {', '.join(MODES)}")
    named = "DEVSTACK_POSTGRES_DSN" in environ or "DEVSTACK_RABBITMQ_URL" in environ
    if mode == "external" or (mode == "auto" and named):
        missing = [
            name for name in ("DEVSTACK_POSTGRES_DSN", "DEVSTACK_RABBITMQ_URL") if not environ.get(name)
        ]
        if missing:
            raise NoServers(
                f"servers of yours need DEVSTACK_POSTGRES_DSN and DEVSTACK_RABBITMQ_URL; set {missing[0]}"
            )
        return Choice("external", "named by you")
    if mode in ("auto", "containers"):
        containers = await _containers(environ)
        if isinstance(containers, Choice):
            return containers
        if mode == "containers":
            raise NoServers(f"DEVSTACK_SERVERS=containers, but {containers}")
        why_not_containers = containers
    else:
        why_not_containers = "DEVSTACK_SERVERS=private"
    private = _private(environ, why_not_containers)
    if isinstance(private, Choice):
        return private
    raise NoServers(
        f"no servers for the run: {why_not_containers}, and {private}. Install Docker, or PostgreSQL and "
        "RabbitMQ (Debian: apt-get install postgresql rabbitmq-server), or name servers of yours with "
        "DEVSTACK_POSTGRES_DSN and DEVSTACK_RABBITMQ_URL"
    )


async def _containers(environ: Mapping[str, str]) -> Choice | str:
    """A Choice of containers, or why not."""
    engine = await docker.engine_answers()
    if engine is None:
        return "no Docker engine answers"
    images = []
    for service, repository in (("postgres", "eda-standin/postgres"), ("rabbitmq", "eda-standin/rabbitmq")):
        image = environ.get(f"DEVSTACK_{service.upper()}_IMAGE") or await _image_for(service, repository)
        if image is None:
            return (
                f"Docker {engine} has no {service} image and could not pull one (without a registry,"
                " build local stand-ins: bash tests/compose/build-standins.sh postgres rabbitmq)"
            )
        images.append(image)
    return Choice(
        "containers", f"Docker {engine} answers", postgres_image=images[0], rabbitmq_image=images[1]
    )


async def _image_for(service: str, standin_repository: str) -> str | None:
    """The image docker-compose.yml ships if it is here, else a local stand-in of it, else the shipped
    one pulled (on a machine that reaches a registry)."""
    shipped = compose_default_image(service)
    if shipped and await docker.image_present(shipped):
        return shipped
    standins = await docker.images_labelled(STANDIN_LABEL, standin_repository)
    if standins:
        return standins[0]
    if shipped:
        with contextlib.suppress(docker.DockerError):
            await docker.docker("pull", "--quiet", shipped, within=600)
            return shipped
    return None


def compose_default_image(service: str) -> str | None:
    """The default image of a compose service, from its `image: ${VARIABLE:-default}` line."""
    text = COMPOSE_FILE.read_text() if COMPOSE_FILE.exists() else ""
    found = re.search(rf"image: \$\{{{service.upper()}_IMAGE:-([^}}]+)\}}", text)
    return found.group(1) if found else None


def _private(environ: Mapping[str, str], why_not_containers: str) -> Choice | str:
    postgres = find_postgres_binaries(environ.get("DEVSTACK_POSTGRES_BIN_DIR"))
    rabbitmq = find_rabbitmq_binaries(environ.get("DEVSTACK_RABBITMQ_BIN_DIR"))
    if postgres is None:
        return "PostgreSQL's server binaries (initdb, postgres) are not installed"
    if rabbitmq is None:
        return "RabbitMQ's server (rabbitmq-server) is not installed"
    return Choice("private", why_not_containers, postgres_bin_dir=postgres, rabbitmq_bin_dir=rabbitmq)


@contextlib.asynccontextmanager
async def started(
    choice: Choice, *, tuned_for_tests: bool = True, environ: Mapping[str, str] | None = None
) -> AsyncIterator[Servers]:
    """The chosen servers, started together and, whatever happens, stopped and removed at the end.

    `tuned_for_tests` trades durability across power loss for speed (fsync off): right for tests,
    wrong for a benchmark that compares with Postgres as it ships."""
    environ = os.environ if environ is None else environ
    settings = TEST_SETTINGS if tuned_for_tests else SHIPPED_SETTINGS
    postgres: Postgres
    rabbitmq: RabbitMQ
    if choice.kind == "containers":
        await docker.remove_abandoned_containers()
        postgres = ContainerPostgres(choice.postgres_image, settings=settings)
        rabbitmq = ContainerRabbitMQ(choice.rabbitmq_image)
    elif choice.kind == "private":
        assert choice.postgres_bin_dir is not None
        assert choice.rabbitmq_bin_dir is not None
        remove_abandoned_instances()
        postgres = PrivatePostgres(choice.postgres_bin_dir, settings=settings)
        rabbitmq = PrivateRabbitMQ(choice.rabbitmq_bin_dir)
    else:
        postgres = ExternalPostgres(environ["DEVSTACK_POSTGRES_DSN"])
        rabbitmq = ExternalRabbitMQ(
            environ["DEVSTACK_RABBITMQ_URL"], environ.get("DEVSTACK_RABBITMQ_MANAGEMENT_URL")
        )
    try:
        # Together, for time; both awaited before failing, so that close() never races a start.
        outcomes = await asyncio.gather(postgres.start(), rabbitmq.start(), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        yield Servers(choice, postgres, rabbitmq)
    finally:
        await asyncio.shield(asyncio.gather(postgres.close(), rabbitmq.close(), return_exceptions=True))
