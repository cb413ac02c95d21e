"""The demo's admin, made the one way there is: the operator's command.

The API has no operation that grants a role (OWASP API5): an operator runs `python -m
users_service.admin grant EMAIL` where users_service's database is reachable, and the user's next
access token carries the role. The demo runs that same command, a process of its own, with
users_service's DATABASE_URL: make dev's by default, or the one it is given (`--users-database-url`,
env DATABASE_URL), as a throwaway stack or the compose network's `tools` container gives it.
"""

import asyncio
import contextlib
import os
import sys

from yarl import URL

from demo.steps import StepFailed
from users_service.config import UsersConfig

COMMAND = ("-m", "users_service.admin")
# users_service's own default: the database `make dev` runs it with.
MAKE_DEV_DATABASE_URL: str = UsersConfig.default_of("DATABASE_URL")


def database_address(database_url: str) -> str:
    """Where the database is, without its credentials (the URL holds a password)."""
    url = URL(database_url)
    return f"{url.host}:{url.port}{url.path}"


async def admin_command(action: str, email: str, *, database_url: str, within: float) -> str:
    """Run `python -m users_service.admin ACTION EMAIL` and return what it printed; a failure, or no
    answer within `within` seconds, fails the step with what it said on stderr."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *COMMAND,
        action,
        email,
        # Its own setting, as the operator's shell would give it; its connection attempts end before
        # the demo stops waiting, so that a database that is not there is said by the command itself.
        env={**os.environ, "DATABASE_URL": database_url, "STARTUP_TIMEOUT": str(within / 2)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), within)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise StepFailed(
            f"users_service.admin {action} did not finish within {within:g} s"
            f" (users_service's database: {database_address(database_url)})"
        ) from None
    if process.returncode != 0:
        said = err.decode(errors="replace").strip().splitlines() or ["(nothing on stderr)"]
        raise StepFailed(
            f"users_service.admin {action} exited with {process.returncode}"
            f" (users_service's database: {database_address(database_url)}): {said[-1]}"
        )
    printed = out.decode(errors="replace").strip().splitlines()
    return printed[-1] if printed else ""
