"""`python -m shared.broker_setup` (`make broker`) where the broker cannot be set up: it says why and
what to run, instead of a traceback. What it sets up is proven against real brokers by every test
that runs the system (devstack applies it to each virtual host), and held to the Kubernetes
manifests by tests/unit/test_k8s_manifests.py."""

import socket
from collections.abc import Iterator

import pytest
from aiohttp import web

from devstack.ports import free_port
from shared import broker_setup
from shared.broker_setup import BrokerSetupConfig, BrokerSetupError, set_up
from tests.support import serving

ENABLE_THE_PLUGIN = "rabbitmq-plugins enable rabbitmq_management"


@pytest.fixture
def amqp_listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Something that accepts connections where AMQP is looked for: a broker whose AMQP port answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port: int = listener.getsockname()[1]
        monkeypatch.setattr(broker_setup, "AMQP_PORT", port)
        yield port


def config(management_url: str) -> BrokerSetupConfig:
    return BrokerSetupConfig.from_env({"RABBITMQ_MANAGEMENT_URL": management_url})


async def failure_of(management_url: str) -> str:
    with pytest.raises(BrokerSetupError) as failure:
        await set_up(config(management_url))
    return str(failure.value)


async def test_a_broker_without_its_management_plugin_is_told_how_to_turn_it_on(amqp_listener: int) -> None:
    # Debian's and Ubuntu's rabbitmq-server: AMQP answers, the management API is not there.
    explained = await failure_of(f"http://127.0.0.1:{free_port()}")
    assert f"RabbitMQ answers on 127.0.0.1:{amqp_listener}" in explained
    assert "management plugin is off" in explained
    assert explained.splitlines()[-1].strip().removeprefix("sudo ") == ENABLE_THE_PLUGIN


async def test_no_broker_at_all_is_told_how_to_install_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_setup, "AMQP_PORT", free_port())
    management_url = f"http://127.0.0.1:{free_port()}"
    explained = await failure_of(management_url)
    assert explained.startswith(
        f"No RabbitMQ answers on 127.0.0.1: neither its management API at {management_url}"
    )
    assert "(connection refused)" in explained
    commands = [line.strip().removeprefix("sudo ") for line in explained.splitlines()[1:]]
    assert commands == ["apt-get install rabbitmq-server", ENABLE_THE_PLUGIN]


async def test_an_administrator_the_broker_refuses_is_named() -> None:
    async def refuse(_: web.Request) -> web.Response:
        return web.json_response({"error": "not_authorised", "reason": "Login failed"}, status=401)

    app = web.Application()
    app.router.add_get("/api/overview", refuse)
    async with serving(app) as management_url:
        explained = await failure_of(management_url)
    assert f"The management API at {management_url} refused RABBITMQ_ADMIN_USER=guest" in explained
    assert "RABBITMQ_ADMIN_PASSWORD" in explained


def test_the_command_ends_with_the_explanation_and_a_failure(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(broker_setup, "AMQP_PORT", free_port())
    monkeypatch.setenv("RABBITMQ_MANAGEMENT_URL", f"http://127.0.0.1:{free_port()}")
    assert broker_setup.main([]) == 1
    error = capsys.readouterr().err
    assert error.startswith("python -m shared.broker_setup: No RabbitMQ answers on 127.0.0.1")
    assert "Traceback" not in error
