"""The few `docker` commands that the container servers need, through the Docker CLI.

The CLI rather than an SDK: it is what a reader types, it honours the user's Docker context
(Docker Desktop, a remote engine, rootless), and these are a handful of calls.
"""

import asyncio
import os
import shutil
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

# Every container devstack starts carries this label, with the host and the process that owns it, so
# that a run that was killed before it could clean up is cleaned up by the next one.
OWNER_LABEL = "org.eda-reference.devstack.owner"
ENGINE_TIMEOUT = 20.0


class DockerError(RuntimeError):
    """A docker command failed; the message carries what it printed."""


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def docker(
    *arguments: str, stdin: bytes | None = None, within: float = 120.0, cwd: Path | None = None
) -> str:
    """Run `docker ARGUMENTS...` (in `cwd`: compose finds its file there); return its standard
    output, or raise DockerError."""
    if shutil.which("docker") is None:
        raise DockerError("the docker command is not installed")
    process = await asyncio.create_subprocess_exec(
        "docker",
        *arguments,
        cwd=cwd,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        output, errors = await asyncio.wait_for(process.communicate(stdin), within)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise DockerError(f"docker {' '.join(arguments)}: no answer within {within:.0f} s") from None
    if process.returncode != 0:
        text = (errors or output).decode(errors="replace").strip()
        raise DockerError(f"docker {' '.join(arguments)}: {text}")
    return output.decode(errors="replace").strip()


async def engine_answers() -> str | None:
    """The engine's version if a Docker engine answers this user, else None."""
    try:
        return await docker("version", "--format", "{{.Server.Version}}", within=ENGINE_TIMEOUT) or None
    except DockerError:
        return None


async def image_present(image: str) -> bool:
    try:
        await docker("image", "inspect", "--format", "{{.Id}}", image)
    except DockerError:
        return False
    return True


async def images_labelled(label: str, repository: str) -> list[str]:
    """Local images of `repository` that carry `label`, newest first."""
    listed = await docker(
        "images", "--filter", f"label={label}", "--format", "{{.Repository}}:{{.Tag}}", repository
    )
    return [line for line in listed.splitlines() if line and not line.endswith(":<none>")]


async def run_container(
    image: str,
    *,
    name: str,
    ports: Mapping[int, int],
    environment: Mapping[str, str] = {},
    hostname: str | None = None,
    command: Sequence[str] = (),
) -> None:
    """Start a detached container; `ports` maps container ports to ports on the host's loopback.

    Host ports are chosen by the caller, not left to the engine: an ephemeral mapping may change when
    the container restarts, and the system's processes must find the server where it was."""
    arguments = ["run", "--detach", "--name", name, "--label", f"{OWNER_LABEL}={owner()}"]
    for inside, outside in ports.items():
        arguments += ["--publish", f"127.0.0.1:{outside}:{inside}"]
    for key, value in environment.items():
        arguments += ["--env", f"{key}={value}"]
    if hostname is not None:
        arguments += ["--hostname", hostname]
    await docker(*arguments, image, *command)


async def remove_container(name: str) -> None:
    """Remove a container and its anonymous volumes, running or not."""
    await docker("rm", "--force", "--volumes", name)


async def remove_abandoned_containers() -> list[str]:
    """Remove the containers of devstack runs on this host whose process is gone (killed before it
    could clean up); return their names."""
    listed = await docker(
        "ps",
        "--all",
        "--filter",
        f"label={OWNER_LABEL}",
        "--format",
        f'{{{{.Names}}}} {{{{.Label "{OWNER_LABEL}"}}}}',
    )
    removed = []
    host = socket.gethostname()
    for line in listed.splitlines():
        name, _, label = line.partition(" ")
        owner_host, _, pid = label.rpartition(":")
        if owner_host == host and pid.isdigit() and not _process_alive(int(pid)):
            await remove_container(name)
            removed.append(name)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
