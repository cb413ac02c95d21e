"""The demo's own logic, without the system: its settings, its poison message, and the clear failure
it ends with when the system is not there or not ready."""

import io
import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from demo.cli import DEFAULT_GATEWAY_URL, DEFAULT_RABBITMQ_URL, START_HINT, main, parse_settings
from demo.poison import broker_address, poison_order_created
from demo.scenario import Settings, money, run
from demo.steps import DemoFailed
from devstack.ports import free_port
from shared.broker_setup import BrokerSetupConfig
from shared.config import OperatorConfig
from shared.envelope import Envelope, InvalidEvent
from shared.events import OrderCreated
from tests.isolation import development_defaults_allowed
from tests.support import serving
from tests.unit.test_compose import ROOT, TOOLS, environment, load_compose

USER_ID = "6522f16f-da95-4120-bdef-8c3b76329545"


@pytest.mark.parametrize(
    ("cents", "shown"),
    [(0, "0.00"), (5, "0.05"), (12_000, "120.00"), (100_001, "1000.01"), (-50_000, "-500.00")],
)
def test_money_is_shown_in_units_with_two_decimals(cents: int, shown: str) -> None:
    assert money(cents) == shown


def test_settings_default_to_make_dev_and_the_flow_page_to_the_gateway() -> None:
    settings = parse_settings([], {})
    assert settings.gateway_url == DEFAULT_GATEWAY_URL
    with development_defaults_allowed():
        make_dev_broker = OperatorConfig.from_env({}).rabbitmq_operator_url.value
    assert settings.rabbitmq_url == DEFAULT_RABBITMQ_URL == make_dev_broker
    assert settings.flow_url == f"{DEFAULT_GATEWAY_URL}/flow"


def test_settings_come_from_the_environment_and_options_win() -> None:
    environ = {"GATEWAY_URL": "http://gateway:8080/", "RABBITMQ_OPERATOR_URL": "amqp://u:p@rabbitmq:5672/"}
    from_env = parse_settings([], environ)
    assert (from_env.gateway_url, from_env.rabbitmq_url) == (
        "http://gateway:8080",
        "amqp://u:p@rabbitmq:5672/",
    )
    assert from_env.flow_url == "http://gateway:8080/flow"
    options = parse_settings(["--flow-url", "http://localhost:9090/flow", "--timeout", "5"], environ)
    assert (options.flow_url, options.timeout) == ("http://localhost:9090/flow", 5.0)


def test_the_poison_message_is_a_valid_envelope_with_data_that_breaks_its_schema() -> None:
    envelope = poison_order_created(USER_ID, -50_000, story="demo-1a2b3c4d-poison")
    received = Envelope.from_json(envelope.to_json())  # the envelope passes...
    assert (received.type, received.correlationid) == (OrderCreated.TYPE, "demo-1a2b3c4d-poison")
    assert received.data["user_id"] == USER_ID
    with pytest.raises(InvalidEvent, match="data.total_cents must be at least 0"):
        received.event()  # ...its data does not: the consumer dead-letters it at once


def test_the_broker_is_named_without_its_credentials() -> None:
    assert broker_address("amqp://user:secret@rabbitmq:5672/vhost") == "rabbitmq:5672/vhost"


def test_nothing_listening_ends_the_demo_at_once_with_a_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per row
    assert main(["--gateway-url", f"http://127.0.0.1:{free_port()}"]) == 1
    captured = capsys.readouterr()
    assert "FAILED: nothing answers at http://127.0.0.1:" in captured.out
    assert "Connection refused" in captured.out
    assert "The demo stopped at step 1 (The system is up)" in captured.err
    assert START_HINT in captured.err


def fake_gateway(readiness: int) -> web.Application:
    async def readyz(_: web.Request) -> web.Response:
        if readiness == 200:
            return web.json_response({"status": "ready", "checks": {"users_service": "ok"}})
        return web.json_response(
            {"title": "Not ready", "status": 503, "detail": "A dependency is not ready."}, status=503
        )

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    return app


async def run_against(url: str, rabbitmq_url: str) -> tuple[DemoFailed, str]:
    out = io.StringIO()
    with pytest.raises(DemoFailed) as failure:
        await run(Settings(url, rabbitmq_url, f"{url}/flow", timeout=1.0), out=out)
    return failure.value, out.getvalue()


async def test_a_gateway_that_is_not_ready_ends_the_demo_at_step_one() -> None:
    async with serving(fake_gateway(503)) as url:
        failure, out = await run_against(url, DEFAULT_RABBITMQ_URL)
    assert failure.number == 1
    assert failure.outcome == (
        "the gateway is not ready: 503 Service Unavailable (Not ready; A dependency is not ready.),"
        " expected 200"
    )
    assert "FAILED: the gateway is not ready" in out


async def test_a_broker_out_of_reach_ends_the_demo_at_step_one() -> None:
    async with serving(fake_gateway(200)) as url:
        failure, _ = await run_against(url, f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert failure.number == 1
    assert failure.outcome.startswith("the gateway is ready, but RabbitMQ at 127.0.0.1:")
    assert "guest" not in failure.outcome


# --- `make demo-compose`: the demo inside the compose network ----------------------------------------

FAKE_DOCKER = """#!/bin/sh
# Answers `docker compose port gateway 8080` as Docker does; records any other command's arguments.
if [ "$1 $2" = "compose port" ]; then
    [ -n "$PUBLISHED" ] && echo "$PUBLISHED"
    exit 0
fi
printf '%s\\n' "$@" > "$RECORD"
"""


def make_demo_compose(tmp_path: Path, published: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run the Makefile's recipe with a stand-in `docker`; its result and the `docker` arguments."""
    docker = tmp_path / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    record = tmp_path / "arguments"
    done = subprocess.run(
        ["make", "--no-print-directory", "-s", "demo-compose", "DEMO_ARGS=--timeout 5"],
        cwd=ROOT,
        env={
            **os.environ,
            "PATH": f"{tmp_path}:{os.environ['PATH']}",
            "PUBLISHED": published,
            "RECORD": str(record),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    return done, record.read_text().splitlines() if record.exists() else []


def test_make_demo_compose_runs_the_demo_as_the_operator_inside_the_compose_network(tmp_path: Path) -> None:
    done, arguments = make_demo_compose(tmp_path, published="0.0.0.0:18080")
    assert done.returncode == 0, done.stderr
    assert arguments[:3] == ["compose", "run", "--rm"]
    container = arguments[arguments.index("python") - 1]
    assert arguments[arguments.index("python") :] == ["python", "-m", "demo", "--timeout", "5"]
    given = dict(arguments[i + 1].split("=", 1) for i, word in enumerate(arguments) if word == "-e")
    # A container of the tools, whose RABBITMQ_OPERATOR_URL (what the demo reads) signs in to the
    # broker as the operator, with the password compose gives it (from .env), never as a service.
    compose, _ = load_compose()
    assert container == TOOLS
    assert "RABBITMQ_OPERATOR_URL" not in given
    assert "RABBITMQ_URL" not in given
    broker = urlsplit(environment(compose, container)["RABBITMQ_OPERATOR_URL"])
    assert (broker.hostname, broker.username) == (
        "rabbitmq",
        BrokerSetupConfig.default_of("RABBITMQ_OPERATOR_USER"),
    )
    # The gateway by its compose name and port; the link by the port published on the host.
    gateway = urlsplit(given["GATEWAY_URL"])
    assert (gateway.hostname, str(gateway.port)) == ("gateway", environment(compose, "gateway")["HTTP_PORT"])
    assert given["FLOW_URL"] == "http://localhost:18080/flow"


def test_make_demo_compose_says_so_when_the_stack_is_not_running(tmp_path: Path) -> None:
    done, arguments = make_demo_compose(tmp_path, published="")
    assert done.returncode != 0
    assert "docker compose up" in done.stderr
    assert arguments == []
