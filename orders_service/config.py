import dataclasses

from shared.config import ConfigError, Secret, ServiceConfig, setting


@dataclasses.dataclass(frozen=True)
class OrdersConfig(ServiceConfig):
    http_port: int = setting("HTTP_PORT", 8002, "Port the HTTP server listens on.")
    database_url: Secret = setting(
        "DATABASE_URL",
        Secret("postgresql://orders_svc:orders_svc@127.0.0.1:5432/orders"),
        "orders_service's own database and role.",
        local=True,
    )
    rabbitmq_url: Secret = setting(
        "RABBITMQ_URL",
        Secret("amqp://orders_service:orders_service@127.0.0.1:5672/"),
        "The broker, as orders_service's own user (shared/broker_setup.py).",
        local=True,
    )
    idempotency_key_ttl_seconds: int = setting(
        "IDEMPOTENCY_KEY_TTL_SECONDS",
        86400,
        "Seconds an `Idempotency-Key` of POST /api/orders is remembered; after that it is a new key.",
    )

    saga_deadline_seconds: float = setting(
        "SAGA_DEADLINE_SECONDS",
        120.0,
        "Seconds an order may stay PENDING: after that the system rejects it (deadline_exceeded), and"
        " an order's end that users_service has not answered is announced again every this many.",
    )
    saga_sweep_interval: float = setting(
        "SAGA_SWEEP_INTERVAL", 5.0, "Seconds between looks for orders past their deadline (in every replica)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # Zero would forget a key before its retry arrives: every retry would place another order.
        if self.idempotency_key_ttl_seconds < 1:
            raise ConfigError("IDEMPOTENCY_KEY_TTL_SECONDS must be at least 1")
