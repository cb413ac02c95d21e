import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from orders_service.config import OrdersConfig
from shared.broker_setup import BrokerSetupConfig
from shared.config import BaseConfig, ConfigError, OperatorConfig, Secret
from tests.isolation import development_defaults_allowed
from users_service.config import UsersConfig


@pytest.fixture
def development_defaults() -> Iterator[None]:
    """These tests are about the defaults themselves, which every other test must name instead."""
    with development_defaults_allowed():
        yield


@pytest.mark.usefixtures("development_defaults")
def test_defaults_are_the_local_development_setup() -> None:
    config = UsersConfig.from_env({})
    assert config.http_port == 8001
    assert config.database_url.value.endswith("@127.0.0.1:5432/users")
    assert OrdersConfig.from_env({}).http_port == 8002
    assert GatewayConfig.from_env({}).http_port == 8080


def test_values_are_read_from_the_environment_and_converted() -> None:
    config = GatewayConfig.from_env(
        {"HTTP_PORT": "9000", "UPSTREAM_TIMEOUT": "2.5", "USERS_SERVICE_URL": "http://users:1"}
    )
    assert (config.http_port, config.upstream_timeout, config.users_service_url) == (
        9000,
        2.5,
        "http://users:1",
    )


def test_a_value_of_the_wrong_type_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="HTTP_PORT='eighty' is not a valid int"):
        GatewayConfig.from_env({"HTTP_PORT": "eighty"})


def test_secrets_never_show_in_reprs_or_logged_settings() -> None:
    config = OrdersConfig.from_env({"DATABASE_URL": "postgresql://u:hunter2@db/orders"})
    assert config.database_url.value == "postgresql://u:hunter2@db/orders"
    assert "hunter2" not in repr(config)
    assert "hunter2" not in str(config.masked())
    assert repr(Secret("x")) == "Secret('********')"


def test_config_is_immutable() -> None:
    config = UsersConfig.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.http_port = 1  # type: ignore[misc]


def test_every_setting_is_documented_with_a_unique_variable() -> None:
    for config_class in (UsersConfig, OrdersConfig, GatewayConfig):
        rows = config_class.documented_settings()
        names = [name for name, _, _ in rows]
        assert len(names) == len(set(names)), config_class
        assert all(doc for _, _, doc in rows), config_class


# Whose settings docs/configuration.md lists, in its order: the processes, then the operator's tools.
DOCUMENTED: dict[str, type[BaseConfig]] = {
    "gateway": GatewayConfig,
    "users_service": UsersConfig,
    "orders_service": OrdersConfig,
    "broker setup": BrokerSetupConfig,
    "tools": OperatorConfig,
}


def settings_table() -> list[str]:
    """The configuration page's table, made from the config classes: one row per (variable, default,
    meaning), naming every process that has it."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for process, config_class in DOCUMENTED.items():
        for name, default, doc in config_class.documented_settings():
            rows.setdefault((name, default, doc), []).append(process)
    processes = {"gateway", "users_service", "orders_service"}
    table = []
    for (name, default, doc), used in rows.items():
        who = "all" if set(used) >= processes else ", ".join(used)
        table.append(f"| `{name}` | {who} | `{default}` | {doc} |")
    return table


def test_the_configuration_page_is_the_table_the_config_classes_make() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    documented = [line for line in page.splitlines() if line.startswith("| `")]
    expected = settings_table()
    assert documented == expected, "docs/configuration.md's table should be:\n" + "\n".join(expected)


@pytest.mark.usefixtures("development_defaults")
def test_outside_development_default_credentials_refuse_to_start() -> None:
    with pytest.raises(ConfigError, match="set DATABASE_URL, RABBITMQ_URL"):
        OrdersConfig.from_env({"ENVIRONMENT": "production"})
    configured = OrdersConfig.from_env(
        {
            "ENVIRONMENT": "production",
            "DATABASE_URL": "postgresql://orders_svc:s3cret@db/orders",
            "RABBITMQ_URL": "amqp://orders:s3cret@mq/",
        }
    )
    assert configured.environment == "production"


@pytest.mark.usefixtures("development_defaults")
def test_outside_development_the_gateway_refuses_the_flow_page_and_default_secrets_it_would_use() -> None:
    production = {"ENVIRONMENT": "production"}
    with pytest.raises(ConfigError, match="set FLOW_ENABLED=false"):
        GatewayConfig.from_env(production)
    with pytest.raises(ConfigError, match="set DATABASE_URL;"):
        GatewayConfig.from_env({**production, "FLOW_ENABLED": "false"})
    # Without the flow page it never connects to the broker, so RABBITMQ_URL may keep its default;
    # without rate limits it never connects to its database.
    without_limits = GatewayConfig.from_env(
        {**production, "FLOW_ENABLED": "false", "RATE_LIMIT_PER_SECOND": "0"}
    )
    assert not without_limits.rate_limited
    configured = GatewayConfig.from_env(
        {**production, "FLOW_ENABLED": "false", "DATABASE_URL": "postgresql://gateway_svc:s3cret@db/gateway"}
    )
    assert configured.rate_limited
    assert not configured.flow_enabled


def test_the_credit_limit_of_new_users_is_a_setting_bounded_as_an_admins_change_is() -> None:
    assert UsersConfig.from_env({}).new_user_credit_limit_cents == 100_000
    assert UsersConfig.from_env({"NEW_USER_CREDIT_LIMIT_CENTS": "0"}).new_user_credit_limit_cents == 0
    assert (
        UsersConfig.from_env({"NEW_USER_CREDIT_LIMIT_CENTS": "10000000"}).new_user_credit_limit_cents
        == 10_000_000
    )
    with pytest.raises(ConfigError, match="NEW_USER_CREDIT_LIMIT_CENTS=-1 must not be negative"):
        UsersConfig.from_env({"NEW_USER_CREDIT_LIMIT_CENTS": "-1"})
    with pytest.raises(ConfigError, match="NEW_USER_CREDIT_LIMIT_CENTS must be within 0..10000000"):
        UsersConfig.from_env({"NEW_USER_CREDIT_LIMIT_CENTS": "10000001"})
