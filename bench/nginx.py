"""nginx from Debian's package as the reference proxy, configured like the gateway is used.

One worker process: the gateway is one Python process, one event loop, so one nginx worker is the
like-for-like proxy; on two cores a second worker would only take CPU from the backend they share.
Keep-alive on both hops (upstream `keepalive`, HTTP/1.1 and an empty Connection header towards the
backend), no access log (the services run at LOG_LEVEL=WARNING, which logs no request either).

The same binary also serves the cheap upstream of R1's second half: a stand-in for orders_service
that answers every request with one fixed body, costing next to nothing, so that what is left of a
proxy's throughput and CPU time is the proxy's own.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from bench.machine import children

# What both the proxy and the cheap upstream are: one worker, in the foreground, every file in the
# run's own folder, no access log; `{servers}` is what each one serves.
CONFIG = """\
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    # nginx closes a keep-alive connection after 1000 requests by default; neither the gateway nor
    # the services do, so the comparison would charge nginx (and the generators) for reconnecting.
    keepalive_requests 1000000;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{servers}
}}
"""

PROXY = """
    upstream orders_service {{
        server {backend};
        keepalive 128;
        keepalive_requests 1000000;
    }}

    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://orders_service;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
        }}
    }}"""

# The cheap upstream: the body given, as JSON, to every request.
STUB = """
    server {{
        listen 127.0.0.1:{port};
        default_type application/json;
        location / {{
            return 200 '{body}';
        }}
    }}"""


def quoted_body(body: bytes) -> str:
    """`body` as the inside of a single-quoted nginx string. nginx would expand a `$` in it as a
    variable, and has no escape for one: such a body is refused rather than served changed."""
    text = body.decode()
    if "$" in text:
        raise ValueError("the cheap upstream cannot serve a body with a '$' in it (nginx expands it)")
    return text.replace("\\", "\\\\").replace("'", "\\'")


class Nginx:
    def __init__(
        self, binary: str, root: Path, port: int, backend: str, *, body: bytes | None = None
    ) -> None:
        """A proxy to `backend` (host:port), or, given `body`, the cheap upstream that serves it."""
        self.binary = binary
        self.root = root
        self.port = port
        self.backend = backend
        self.body = body
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        if self.process is None or self.process.returncode is not None:
            return []
        return [self.process.pid, *children(self.process.pid)]

    def log_text(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "nginx.conf"
        if self.body is None:
            servers = PROXY.format(port=self.port, backend=self.backend)
        else:
            servers = STUB.format(port=self.port, body=quoted_body(self.body))
        config.write_text(CONFIG.format(root=self.root, servers=servers))
        # -e: the error log before the config is read, so nothing is written to /var/log/nginx.
        self.process = await asyncio.create_subprocess_exec(
            self.binary,
            "-p",
            str(self.root),
            "-c",
            str(config),
            "-e",
            str(self.root / "error.log"),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()  # nginx: SIGTERM is its fast shutdown
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


@contextlib.asynccontextmanager
async def running_nginx(
    binary: str, root: Path, port: int, backend: str = "", *, body: bytes | None = None
) -> AsyncIterator[Nginx]:
    nginx = Nginx(binary, root, port, backend, body=body)
    await nginx.start()
    try:
        yield nginx
    finally:
        await nginx.stop()
