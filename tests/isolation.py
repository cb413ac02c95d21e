"""The suite depends on nothing it did not create.

A test that builds a config or starts a process without naming its database, broker, key files,
neighbours' addresses and port would otherwise fall back on the defaults, which name what `make dev`
set up on this machine (the databases `users`, `orders` and `gateway`, RabbitMQ's vhost `/`, the key
pair in .keys/): it would pass where `make dev` once ran and fail on a new machine, or worse, use a
developer's own data. So, for the whole session:

- every setting whose default is local (`setting(..., local=True)` in the config classes) is set in
  the environment to a value that names the mistake and cannot work
  ("tests-must-name-database-url:": no client accepts that scheme, no file has that name), so that
  a process started without its own value refuses to start, with the variable's name;
- a config built by hand in a test gets that same value for every local setting it leaves at its
  default: a test of pure logic that never connects is unaffected, and one that connects, loads a
  key or calls a neighbour fails at once, saying which setting it forgot;
- libpq's and rabbitmqctl's own defaults (PGHOST, RABBITMQ_NODENAME) point nowhere.

Ports need nothing here: devstack starts a process only with the HTTP_PORT it is given.

A unit test about the defaults themselves asks for them with `development_defaults_allowed()`.
"""

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

import pytest

import gateway.config
import orders_service.config
import users_service.config
from shared.config import BaseConfig, Secret

MARK = "tests-must-name"
_defaults_allowed = False


def config_classes() -> list[type[BaseConfig]]:
    """Every config class of the code base (the service packages are imported above for this)."""
    assert gateway.config
    assert orders_service.config
    assert users_service.config
    found: list[type[BaseConfig]] = []
    pending: list[type[BaseConfig]] = [BaseConfig]
    while pending:
        current = pending.pop()
        found.append(current)
        pending.extend(current.__subclasses__())
    return found


def local_settings(config_class: type[BaseConfig]) -> dict[str, str]:
    """field name -> environment variable, for every setting whose default is local."""
    return {
        field.name: field.metadata["env"]
        for field in dataclasses.fields(config_class)
        if field.metadata.get("local")
    }


def unusable(env: str) -> str:
    """A value for setting `env` that fails wherever it is used and says what was forgotten."""
    return f"{MARK}-{env.lower().replace('_', '-')}:"


def poisoned_environment() -> dict[str, str]:
    environment = {
        env: unusable(env)
        for config_class in config_classes()
        for env in local_settings(config_class).values()
    }
    environment["PGHOST"] = f"/nonexistent/{MARK}"
    environment["RABBITMQ_NODENAME"] = f"{MARK}@nowhere"
    return environment


def _poisoned(config: BaseConfig) -> None:
    """Give every local setting that `config` left at its default the value that cannot work."""
    for field in dataclasses.fields(config):
        if field.metadata.get("local") and getattr(config, field.name) == field.default:
            value = unusable(field.metadata["env"])
            # The idiom for a frozen dataclass, in its own __post_init__.
            object.__setattr__(
                config, field.name, Secret(value) if isinstance(field.default, Secret) else value
            )


def _guarded(original: Callable[[BaseConfig], None]) -> Callable[[BaseConfig], None]:
    def __post_init__(self: BaseConfig) -> None:
        if not _defaults_allowed:
            _poisoned(self)
        original(self)

    return __post_init__


def isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply everything above for as long as `monkeypatch` lasts (the session)."""
    for key in ("PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "PGSERVICE", "PGSERVICEFILE", "PGPASSFILE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in poisoned_environment().items():
        monkeypatch.setenv(key, value)
    # The generated __init__ of every config dataclass looks __post_init__ up when it runs, so the
    # base class's, wrapped here, guards every subclass (theirs call super().__post_init__()).
    monkeypatch.setattr(BaseConfig, "__post_init__", _guarded(BaseConfig.__post_init__))


@contextlib.contextmanager
def development_defaults_allowed() -> Iterator[None]:
    """For a test about the defaults themselves."""
    global _defaults_allowed
    _defaults_allowed = True
    try:
        yield
    finally:
        _defaults_allowed = False
