"""A process that a test starts without naming its database refuses to start, at once, saying which
setting was forgotten: on every machine, whatever `make dev` left behind on this one."""

import asyncio
import shutil
from pathlib import Path

import pytest

from devstack.keys import KeyPair
from devstack.ports import free_port
from devstack.processes import service_process


async def test_a_process_without_its_database_refuses_to_start_and_says_why(
    key_pair: KeyPair, tmp_path: Path
) -> None:
    env = {"HTTP_PORT": str(free_port()), "JWT_PUBLIC_KEY_FILE": str(key_pair.public)}
    orders = service_process("orders_service", "orders_service", env, tmp_path)
    with pytest.raises(AssertionError, match="exited at start"):
        await orders.start(ready_within=60)
    assert orders.process is not None
    assert orders.process.returncode not in (None, 0)
    assert "tests-must-name-database-url" in orders.log_text()


def test_a_process_is_never_started_on_its_default_port(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HTTP_PORT"):
        service_process("gateway", "gateway", {}, tmp_path)


async def test_libpq_defaults_point_nowhere() -> None:
    if shutil.which("psql") is None:
        pytest.skip("no psql on this machine, so nothing here can fall back on libpq's defaults")
    process = await asyncio.create_subprocess_exec(
        "psql", "-Atc", "SELECT 1", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await process.communicate()
    assert process.returncode != 0, output
    assert b"/nonexistent/tests-must-name" in output
