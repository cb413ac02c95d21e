"""`make test-compose`: the whole system in containers, as `docker compose up --build` runs it, tested
end to end through the gateway's published port, and then removed with its volumes.

    python -m tests.compose.run

1. Picks the base images. The official ones that docker-compose.yml names by default are used when
   they are here or can be pulled; for each one that cannot be had (no registry access), a local
   stand-in is built (tests/compose/build-standins.sh: Python 3.11 from Debian 12, PostgreSQL 17 and
   RabbitMQ 4.0 from Debian 13) and passed through the compose file's own variable: PYTHON_IMAGE,
   POSTGRES_IMAGE or RABBITMQ_IMAGE. A stand-in must be of the major the compose file ships (the run
   stops if one drifts). A variable already set in the environment is left alone.
   COMPOSE_TEST_IMAGES=official or =standin forces one kind for all three.
2. Has compose check the file with the profile `observability` on too (that profile's services are
   not started), builds the application image from deploy/Dockerfile and starts the stack under a
   project name of its own, with the gateway and the management UI on free ports, so that it never
   meets a stack a developer runs. A developer's own `.env` beside the compose file is not read (see
   COMPOSE_OPTIONS): the stack is the compose file's defaults and what this run sets, on every machine.
3. Waits, with a deadline, until every long-running service is healthy and the one-shots (the key
   generator, the broker's set-up) have exited cleanly, and prints how long that took.
4. Runs tests/compose/ (the end-to-end tests, a restart of each service mid-burst, what each
   service's broker user may publish, and the dead letters under RabbitMQ 4's delivery limit)
   against it.
5. Always tears the stack down with `docker compose down -v`; on failure it prints the logs first.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
BUILD_STANDINS = ROOT / "tests" / "compose" / "build-standins.sh"
# The compose variable of each base image, and the stand-in build-standins.sh makes for it.
IMAGE_VARIABLES = {"PYTHON_IMAGE": "python", "POSTGRES_IMAGE": "postgres", "RABBITMQ_IMAGE": "rabbitmq"}
HEALTHY_DEADLINE = 240.0
HEALTH_POLL_INTERVAL = 1.0  # between looks at `docker compose ps`, inside the deadline above
PULL_DEADLINE = 600.0
BUILD_DEADLINE = 1200.0
DOWN_DEADLINE = 120.0
ONE_SHOT_SERVICES = {"keygen", "broker-setup"}
# Jaeger, Prometheus and Grafana: started only on request, and not by this run (see main).
OBSERVABILITY_PROFILE = "observability"
# Given to every `docker compose` this run and its tests make. Compose reads a `.env` file beside the
# compose file by itself, and a developer's (copied from .env.example to change a password, a port or
# an image) would change what is tested, or break it (COMPOSE_FILE, COMPOSE_PROFILES and the image
# variables may be set there too). An explicit, empty env file replaces it: what runs is the compose
# file's defaults and what this run sets in the environment.
COMPOSE_OPTIONS = ("--env-file", os.devnull)
# Each run's project is named after the driver's process, so that a stack left by a run that was
# killed (its restart policy brings it back with the engine) can be told apart and removed.
PROJECT_PREFIX = "eda-compose-test-"


def log(message: str) -> None:
    print(f"[test-compose] {message}", flush=True)


def run(
    command: Sequence[str], *, timeout: float, check: bool = True, capture: bool = False
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command), cwd=ROOT, check=check, timeout=timeout, text=True, capture_output=capture
    )


def official_images() -> dict[str, str]:
    """Each image variable's default in docker-compose.yml: the official image a user gets."""
    text = COMPOSE_FILE.read_text()
    found = {}
    for variable in IMAGE_VARIABLES:
        defaults = set(re.findall(rf"\$\{{{variable}:-([^}}]+)\}}", text))
        assert len(defaults) == 1, f"docker-compose.yml: {variable} needs exactly one default, not {defaults}"
        found[variable] = defaults.pop()
    return found


def major(image: str) -> str:
    """The major version an image's tag starts with: "17" for postgres:17.12-trixie and for
    eda-standin/postgres:17-trixie, "4" for rabbitmq:4.4.1-management."""
    tag = image.rpartition("/")[2].partition(":")[2]
    found = re.match(r"\d+", tag)
    assert found, f"{image}: its tag names no version"
    return found[0]


def can_have(image: str) -> tuple[bool, str]:
    """Whether the image is here already or can be pulled now, and why not."""
    if run(["docker", "image", "inspect", image], timeout=30, check=False, capture=True).returncode == 0:
        return True, "present"
    try:
        pulled = run(["docker", "pull", "--quiet", image], timeout=PULL_DEADLINE, check=False, capture=True)
    except subprocess.TimeoutExpired:
        return False, f"docker pull took over {PULL_DEADLINE:.0f} s"
    if pulled.returncode == 0:
        return True, "pulled"
    reason = (pulled.stderr.strip().splitlines() or ["docker pull failed"])[-1]
    return False, reason


def choose_images() -> dict[str, str]:
    """Set each image variable that needs a stand-in; return what each service is built from."""
    mode = os.environ.get("COMPOSE_TEST_IMAGES", "auto")
    assert mode in {"auto", "official", "standin"}, f"COMPOSE_TEST_IMAGES={mode}: auto, official or standin"
    chosen: dict[str, str] = {}
    standins_needed: list[str] = []
    officials = official_images()
    for variable, official in officials.items():
        if os.environ.get(variable):
            chosen[variable] = f"{os.environ[variable]} (set in the environment)"
            continue
        if mode == "standin":
            standins_needed.append(variable)
            continue
        available, how = can_have(official)
        if available:
            chosen[variable] = f"{official} (official, {how})"
        elif mode == "official":
            raise SystemExit(f"{official} cannot be had: {how}")
        else:
            log(f"{official} cannot be had ({how}): a local stand-in takes its place")
            standins_needed.append(variable)
    if standins_needed:
        started = time.monotonic()
        # Its progress goes to standard error, as it happens; VARIABLE=image lines to standard output.
        built = subprocess.run(
            ["bash", str(BUILD_STANDINS), *(IMAGE_VARIABLES[variable] for variable in standins_needed)],
            cwd=ROOT,
            check=True,
            timeout=BUILD_DEADLINE,
            text=True,
            stdout=subprocess.PIPE,
        )
        made = dict(line.split("=", 1) for line in built.stdout.split() if "=" in line)
        for variable in standins_needed:
            # What is tested must be the major that is shipped: a compose file moved to a new major
            # with its stand-in left behind would otherwise pass on the old one.
            assert major(made[variable]) == major(officials[variable]), (
                f"the stand-in {made[variable]} is not of the major docker-compose.yml ships,"
                f" {officials[variable]}: update tests/compose/build-standins.sh"
            )
            os.environ[variable] = made[variable]
            chosen[variable] = f"{made[variable]} (stand-in for {officials[variable]})"
        log(f"stand-ins ready in {time.monotonic() - started:.0f} s")
    return chosen


def free_port() -> int:
    """A port free on every interface: the gateway is published on all of them."""
    with socket.socket() as probe:
        probe.bind(("", 0))
        port: int = probe.getsockname()[1]
        return port


class Stack:
    """One compose project, driven through the `docker compose` CLI."""

    def __init__(self, project: str) -> None:
        self.project = project

    def compose(self, *arguments: str) -> list[str]:
        return ["docker", "compose", *COMPOSE_OPTIONS, "--project-name", self.project, *arguments]

    def containers(self) -> list[dict[str, Any]]:
        listed = run(self.compose("ps", "--all", "--format", "json"), timeout=30, capture=True).stdout.strip()
        if not listed:
            return []
        if listed.startswith("["):  # before Compose 2.21: one JSON array
            parsed: list[dict[str, Any]] = json.loads(listed)
            return parsed
        return [json.loads(line) for line in listed.splitlines()]  # since: one object a line

    def restarts(self, containers: list[dict[str, Any]]) -> dict[str, int]:
        names = [container["Name"] for container in containers]
        if not names:
            return {}
        inspected = run(
            ["docker", "inspect", "--format", "{{.Name}} {{.RestartCount}}", *names], timeout=30, capture=True
        )
        return {name.lstrip("/"): int(count) for name, count in map(str.split, inspected.stdout.splitlines())}

    def wait_healthy(self, services: set[str]) -> float:
        """Seconds until every long-running service is healthy and every one-shot exited with 0.

        Fails at once, rather than at the deadline, when a container exits, turns unhealthy or is
        restarted by its restart policy (a crash loop).
        """
        started = time.monotonic()
        while True:
            containers = self.containers()
            states = {container["Service"]: container for container in containers}
            crashed = {name: count for name, count in self.restarts(containers).items() if count}
            assert not crashed, f"restarted after a crash: {crashed}"
            waiting = []
            for service in sorted(services):
                container = states.get(service)
                if container is None:
                    waiting.append(f"{service}: no container")
                elif service in ONE_SHOT_SERVICES:
                    if container["State"] == "exited":
                        assert container["ExitCode"] == 0, f"{service} exited with {container['ExitCode']}"
                    else:
                        waiting.append(f"{service}: {container['State']}")
                else:
                    assert container["State"] in {"created", "running", "restarting"}, (
                        f"{service} is {container['State']}: {container.get('Status')}"
                    )
                    assert container.get("Health") != "unhealthy", f"{service} is unhealthy"
                    if container.get("Health") != "healthy":
                        waiting.append(f"{service}: {container.get('Health') or container['State']}")
            if not waiting:
                return time.monotonic() - started
            elapsed = time.monotonic() - started
            assert elapsed < HEALTHY_DEADLINE, f"not healthy within {HEALTHY_DEADLINE:.0f} s: {waiting}"
            time.sleep(HEALTH_POLL_INTERVAL)

    def services(self) -> set[str]:
        listed = run(self.compose("config", "--services"), timeout=30, capture=True).stdout
        return set(listed.split())

    def print_logs(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            run(self.compose("logs", "--no-color", "--timestamps", "--tail", "150"), timeout=60, check=False)

    def down(self) -> None:
        started = time.monotonic()
        run(
            self.compose("down", "--volumes", "--remove-orphans", "--timeout", "20"),
            timeout=DOWN_DEADLINE,
            check=False,
        )
        log(f"stack removed with its volumes in {time.monotonic() - started:.0f} s")


def remove_abandoned_stacks() -> None:
    """Remove the stacks of earlier runs whose driver is gone (killed before it could tear down)."""
    listed = run(
        ["docker", "ps", "--all", "--format", '{{.Label "com.docker.compose.project"}}'],
        timeout=30,
        capture=True,
    )
    for project in sorted(set(listed.stdout.split())):
        if not project.startswith(PROJECT_PREFIX):
            continue
        pid = project.removeprefix(PROJECT_PREFIX).partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log(f"removing {project}, left behind by a run that did not finish")
            Stack(project).down()


def prune_replaced_images() -> None:
    """Earlier builds of the application image, now untagged, would fill the disk run after run."""
    run(
        [
            "docker",
            "image",
            "prune",
            "--force",
            "--filter",
            "label=org.opencontainers.image.title=eda-reference",
        ],
        timeout=120,
        check=False,
        capture=True,
    )


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (CI stopping the run) unwinds like Ctrl-C does, so the stack is still torn down."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    started = time.monotonic()
    log("images: " + ", ".join(f"{variable}={how}" for variable, how in choose_images().items()))
    remove_abandoned_stacks()
    stack = Stack(f"{PROJECT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}")
    gateway_port = free_port()
    # Read by compose (the ports, the project of every `docker compose` the tests run) and by the
    # tests themselves (COMPOSE_GATEWAY_URL also switches tests/compose/ on).
    os.environ.update(
        COMPOSE_PROJECT_NAME=stack.project,
        GATEWAY_PORT=str(gateway_port),
        RABBITMQ_MANAGEMENT_PORT=str(free_port()),
        COMPOSE_GATEWAY_URL=f"http://127.0.0.1:{gateway_port}",
    )
    passed = False
    with sigterm_as_exit():
        try:
            # The profile's services are not started: their images (Jaeger, Prometheus, Grafana)
            # have no stand-in for machines without registry access. Compose still checks that the
            # file holds together with the profile on; tests/unit/test_observability.py checks what
            # it says.
            run(stack.compose("--profile", OBSERVABILITY_PROFILE, "config", "--quiet"), timeout=60)
            log(f"docker-compose.yml is valid with the profile {OBSERVABILITY_PROFILE}")
            build_started = time.monotonic()
            run(stack.compose("build"), timeout=BUILD_DEADLINE)
            log(f"application image built in {time.monotonic() - build_started:.0f} s")
            up_started = time.monotonic()
            run(stack.compose("up", "--detach", "--no-build"), timeout=HEALTHY_DEADLINE)
            stack.wait_healthy(stack.services())
            log(f"the stack was healthy {time.monotonic() - up_started:.1f} s after `docker compose up`")
            run(stack.compose("ps"), timeout=30)
            tests_started = time.monotonic()
            pytest = run(
                [sys.executable, "-m", "pytest", "tests/compose", "-p", "no:cacheprovider", "-v", "-s"],
                timeout=BUILD_DEADLINE,
                check=False,
            )
            log(f"end-to-end tests ran in {time.monotonic() - tests_started:.0f} s")
            passed = pytest.returncode == 0
        except (AssertionError, subprocess.SubprocessError) as failure:
            log(f"FAILED: {failure}")
        finally:
            if not passed:
                stack.print_logs()
            stack.down()
            prune_replaced_images()
    log(f"{'passed' if passed else 'FAILED'} in {time.monotonic() - started:.0f} s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
