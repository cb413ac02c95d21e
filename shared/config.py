"""Configuration as frozen dataclasses read from environment variables only.

Every field is declared with `setting(ENV_NAME, default, doc)`, so the dataclass itself is the
documentation: the docker-compose check is built from it, and docs/configuration.md's table is held to it.
"""

import dataclasses
import importlib
import os
import typing
from collections.abc import Mapping
from typing import Any, Self, TypeVar

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Secret:
    """A string that never shows itself in a repr, a log line or a traceback."""

    value: str

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__


def setting(env: str, default: T, doc: str, *, local: bool = False) -> T:
    """A config field read from the environment variable `env`, falling back to `default`.

    `local` marks a default that names something of the development set-up on this machine (`make
    dev`'s database, its broker, the key files in .keys/, a neighbour's port): right for `make dev`,
    and a thing that a test must never fall back on (tests/isolation.py)."""
    field: T = dataclasses.field(default=default, metadata={"env": env, "doc": doc, "local": local})
    return field


class ConfigError(ValueError):
    """An environment variable is set to something its field cannot hold."""


def _convert(raw: str, target: Any, env: str) -> Any:
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
                raise ValueError(raw)
            return lowered in {"1", "true", "yes", "on"}
        if target is Secret:
            return Secret(raw)
        if target in (int, float, str):
            return target(raw)
    except ValueError as error:
        raise ConfigError(f"{env}={raw!r} is not a valid {target.__name__}") from error
    raise TypeError(f"unsupported config field type for {env}: {target!r}")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Settings every process has. Services subclass it and add or override fields."""

    environment: str = setting(
        "ENVIRONMENT", "development", "Anything but `development` refuses to start with default credentials."
    )
    http_host: str = setting("HTTP_HOST", "127.0.0.1", "Interface the HTTP server binds to.")
    http_port: int = setting("HTTP_PORT", 8000, "Port the HTTP server listens on.")
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR.")
    log_format: str = setting("LOG_FORMAT", "console", "`console` for people, `json` for machines.")
    shutdown_timeout: float = setting(
        "SHUTDOWN_TIMEOUT", 10.0, "Seconds SIGTERM waits for in-flight work before closing."
    )
    startup_timeout: float = setting(
        "STARTUP_TIMEOUT", 60.0, "Seconds to keep retrying Postgres and RabbitMQ at start."
    )
    max_body_bytes: int = setting("MAX_BODY_BYTES", 65536, "Largest request body accepted (413 above).")
    otel_exporter_otlp_endpoint: str = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OpenTelemetry collector (OTLP over HTTP, e.g. `http://jaeger:4318`) that traces go to;"
        " empty: tracing is off and costs nothing.",
    )

    def __post_init__(self) -> None:
        # Refused at start, with the variable's name, rather than failing later and obscurely.
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"HTTP_PORT={self.http_port} is not a TCP port")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{field.metadata['env']}={value} must not be negative")

    @property
    def tracing_enabled(self) -> bool:
        return bool(self.otel_exporter_otlp_endpoint)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        environ = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            env = field.metadata["env"]
            if env in environ:
                values[field.name] = _convert(environ[env], hints[field.name], env)
        config = cls(**values)
        config.refuse_default_secrets()
        return config

    def refuse_default_secrets(self) -> None:
        """Outside local development, a secret left at its (well-known) default is a mistake."""
        if self.environment == "development":
            return
        in_use = self.secrets_in_use()
        defaulted = [
            field.metadata["env"]
            for field in dataclasses.fields(self)
            if field.name in in_use and getattr(self, field.name) == field.default
        ]
        if defaulted:
            names = ", ".join(defaulted)
            raise ConfigError(f"ENVIRONMENT={self.environment}: set {names}; their defaults are local-only")

    def unused_settings(self) -> set[str]:
        """The fields this process will not use, given its other settings: none, unless a subclass
        knows better (the gateway without rate limits never opens its database)."""
        return set()

    def secrets_in_use(self) -> set[str]:
        """The secret fields this process will really use."""
        return {
            field.name
            for field in dataclasses.fields(self)
            if isinstance(field.default, Secret) and field.name not in self.unused_settings()
        }

    @classmethod
    def default_of(cls, env: str) -> Any:
        """The default of the setting read from `env`, without building a config."""
        for field in dataclasses.fields(cls):
            if field.metadata["env"] == env:
                return field.default.value if isinstance(field.default, Secret) else field.default
        raise KeyError(env)

    @classmethod
    def documented_settings(cls) -> list[tuple[str, str, str]]:
        """(environment variable, default, description) for every field, in declaration order."""
        rows = []
        for field in dataclasses.fields(cls):
            default = field.default
            shown = default.value if isinstance(default, Secret) else default
            rows.append((field.metadata["env"], str(shown), field.metadata["doc"]))
        return rows

    def masked(self) -> dict[str, Any]:
        """The settings as loggable values, secrets masked."""
        shown: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            shown[field.name] = repr(value) if isinstance(value, Secret) else value
        return shown


@dataclasses.dataclass(frozen=True)
class TokenConfig(BaseConfig):
    """Settings of a process that verifies access tokens (all three do)."""

    jwt_public_key_file: str = setting(
        "JWT_PUBLIC_KEY_FILE",
        ".keys/jwt-public.pem",
        "Ed25519 public key (PEM) that verifies tokens; during a key rotation, several files"
        " separated by commas (a token is checked with the key its `kid` names).",
        local=True,
    )
    jwt_issuer: str = setting("JWT_ISSUER", "eda-reference/users", "Expected `iss` of tokens.")
    jwt_audience: str = setting("JWT_AUDIENCE", "eda-reference", "Expected `aud` of tokens.")


@dataclasses.dataclass(frozen=True)
class DatabaseConfig(BaseConfig):
    """Settings of a process with a Postgres database of its own (all three have one)."""

    database_url: Secret = setting(
        "DATABASE_URL", Secret("postgresql://localhost/postgres"), "The process's own database.", local=True
    )
    database_pool_size: int = setting("DATABASE_POOL_SIZE", 10, "Most connections in the pool.")


@dataclasses.dataclass(frozen=True)
class OperatorConfig(BaseConfig):
    """Settings of the operator's tools (make dlq, make dlq-replay, the demo's poison message)."""

    rabbitmq_operator_url: Secret = setting(
        "RABBITMQ_OPERATOR_URL",
        Secret("amqp://operator:operator@127.0.0.1:5672/"),
        "The broker, as the operator: the tools' user (shared/broker_setup.py), who may read every"
        " queue and replay a message as the service that sent it.",
        local=True,
    )


@dataclasses.dataclass(frozen=True)
class ServiceConfig(TokenConfig, DatabaseConfig):
    """Settings of a service that owns a database and talks to RabbitMQ."""

    rabbitmq_url: Secret = setting(
        "RABBITMQ_URL", Secret("amqp://guest:guest@127.0.0.1:5672/"), "The broker.", local=True
    )
    consumer_prefetch: int = setting(
        "CONSUMER_PREFETCH",
        32,
        "Most unacknowledged messages a consumer holds at once: twice CONSUMER_BATCH_SIZE, so that the"
        " next batch arrives while one commits.",
    )
    consumer_batch_size: int = setting(
        "CONSUMER_BATCH_SIZE",
        16,
        "Most consumed events applied together in one transaction (shared/inbox.py); 1 applies each"
        " alone. A batch is what waits when the last one commits, so at light load it is one event.",
    )
    retry_delays_ms: str = setting(
        "RETRY_DELAYS_MS",
        "1000,5000,30000",
        "Delays before each retry of a failed message; after the last, it is dead-lettered.",
    )
    queue_check_interval: float = setting(
        "QUEUE_CHECK_INTERVAL",
        15.0,
        "Seconds between checks that the queues this service consumes from and publishes to exist"
        " (declared again, and counted, when one was deleted).",
    )
    database_unavailable_wait: float = setting(
        "DATABASE_UNAVAILABLE_WAIT",
        60.0,
        "Seconds a consumed event waits, in place, for an unreachable database before it is retried"
        " later through the retry queues like any failure.",
    )
    outbox_poll_interval: float = setting(
        "OUTBOX_POLL_INTERVAL",
        0.5,
        "Seconds between outbox checks when nothing nudges the relay (rows of other replicas).",
    )
    outbox_batch_size: int = setting("OUTBOX_BATCH_SIZE", 100, "Most outbox rows published per batch.")
    publish_timeout: float = setting(
        "PUBLISH_TIMEOUT", 5.0, "Seconds to wait for the broker's confirm of a publish."
    )
    outbox_retention_seconds: float = setting(
        "OUTBOX_RETENTION_SECONDS",
        3600.0,
        "Seconds a published outbox row is kept (for people reading the story) before it is deleted.",
    )
    inbox_retention_seconds: float = setting(
        "INBOX_RETENTION_SECONDS",
        86400.0,
        "Seconds an inbox row is kept: a redelivery within this window is skipped by the event's id;"
        " a later one is decided again by the state it finds, and changes nothing.",
    )
    retention_interval: float = setting(
        "RETENTION_INTERVAL", 60.0, "Seconds between retention runs (deleting old outbox and inbox rows)."
    )

    @property
    def retry_delays(self) -> tuple[int, ...]:
        return tuple(int(delay) for delay in self.retry_delays_ms.split(",") if delay.strip())


def config_class_of(package: str) -> type[BaseConfig]:
    """The config class that a process's package declares in its `config` module (UsersConfig for
    users_service), for the operator's commands, which act with the settings that process would."""
    try:
        module = importlib.import_module(f"{package}.config")
    except ModuleNotFoundError:
        raise ValueError(f"{package!r} is not a process of this system (no {package}.config)") from None
    found = [
        value
        for value in vars(module).values()
        if isinstance(value, type) and issubclass(value, BaseConfig) and value.__module__ == module.__name__
    ]
    if len(found) != 1:
        raise ValueError(
            f"{package!r} is not a process of this system"
            f" ({package}.config declares {len(found)} config classes, not one)"
        )
    return found[0]
