"""The compose stack's end-to-end tests run only under `make test-compose` (tests/compose/run.py),
which starts the stack and names it in COMPOSE_PROJECT_NAME and COMPOSE_GATEWAY_URL. Without them, as
in `make test`, nothing here is collected."""

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devstack.docker import docker
from tests.compose.run import COMPOSE_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_URL = os.environ.get("COMPOSE_GATEWAY_URL", "")
PROJECT = os.environ.get("COMPOSE_PROJECT_NAME", "")

collect_ignore_glob: list[str] = [] if GATEWAY_URL and PROJECT else ["test_*.py"]


@pytest.fixture(scope="session")
def gateway_url() -> str:
    return GATEWAY_URL.rstrip("/")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def docker_compose(*arguments: str, within: float = 120.0, stdin: bytes | None = None) -> str:
    """`docker compose` on the stack under test, with the options every run uses (no `.env`)."""
    return await docker(
        "compose",
        *COMPOSE_OPTIONS,
        "--project-name",
        PROJECT,
        *arguments,
        within=within,
        stdin=stdin,
        cwd=ROOT,
    )


async def containers() -> dict[str, dict[str, Any]]:
    """The stack's containers by service, as `docker inspect` describes them."""
    ids = (await docker_compose("ps", "--all", "--quiet")).split()
    assert ids, f"no container in project {PROJECT}"
    inspected: list[dict[str, Any]] = json.loads(await docker("inspect", *ids))
    return {container["Config"]["Labels"]["com.docker.compose.service"]: container for container in inspected}
