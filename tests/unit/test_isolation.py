"""The suite depends on nothing it did not create (tests/isolation.py): a config that a test builds
without naming a local setting gets a value that fails where it is used, whatever this machine has."""

import dataclasses

import pytest

from gateway.config import GatewayConfig
from orders_service.config import OrdersConfig
from shared.config import BaseConfig, Secret, ServiceConfig
from tests.isolation import config_classes, development_defaults_allowed, local_settings, unusable
from users_service.config import UsersConfig


def shown(value: object) -> str:
    return value.value if isinstance(value, Secret) else str(value)


@pytest.mark.parametrize("config_class", config_classes(), ids=lambda cls: cls.__name__)
def test_every_local_setting_left_unnamed_is_unusable_however_the_config_is_built(
    config_class: type[BaseConfig],
) -> None:
    for config in (config_class(), config_class.from_env()):
        for name, env in local_settings(config_class).items():
            assert shown(getattr(config, name)) == unusable(env), (config_class.__name__, env)


def test_the_services_name_their_databases_brokers_keys_and_neighbours_as_local() -> None:
    assert set(local_settings(UsersConfig).values()) == {
        "DATABASE_URL",
        "RABBITMQ_URL",
        "JWT_PUBLIC_KEY_FILE",
        "JWT_PRIVATE_KEY_FILE",
    }
    assert set(local_settings(OrdersConfig).values()) == {
        "DATABASE_URL",
        "RABBITMQ_URL",
        "JWT_PUBLIC_KEY_FILE",
    }
    assert set(local_settings(GatewayConfig).values()) >= {"USERS_SERVICE_URL", "ORDERS_SERVICE_URL"}


def test_a_setting_the_test_names_is_kept() -> None:
    config = OrdersConfig(
        database_url=Secret("postgresql://db/orders"), jwt_public_key_file="/keys/public.pem"
    )
    assert config.database_url.value == "postgresql://db/orders"
    assert config.jwt_public_key_file == "/keys/public.pem"
    assert config.rabbitmq_url.value == unusable("RABBITMQ_URL")
    replaced = dataclasses.replace(config, startup_timeout=1)
    assert replaced.database_url.value == "postgresql://db/orders"


def test_the_unusable_value_says_what_was_forgotten_and_no_client_accepts_it() -> None:
    value = unusable("DATABASE_URL")
    assert value == "tests-must-name-database-url:"
    scheme, _, rest = value.partition(":")
    assert scheme not in {"postgresql", "postgres", "amqp", "amqps", "http", "https"}
    assert rest == ""


def test_the_defaults_themselves_are_there_when_asked_for() -> None:
    with development_defaults_allowed():
        assert ServiceConfig().rabbitmq_url.value == "amqp://guest:guest@127.0.0.1:5672/"
    assert ServiceConfig().rabbitmq_url.value == unusable("RABBITMQ_URL")
