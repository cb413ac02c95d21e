import dataclasses

from shared.config import Secret, ServiceConfig, setting


@dataclasses.dataclass(frozen=True)
class OrdersConfig(ServiceConfig):
    http_port: int = setting("HTTP_PORT", 8002, "Port the HTTP server listens on.")
    database_url: Secret = setting(
        "DATABASE_URL",
        Secret("postgresql://orders_svc:orders_svc@127.0.0.1:5432/orders"),
        "orders_service's own database and role.",
    )
