import dataclasses

from shared.config import TokenConfig, setting


@dataclasses.dataclass(frozen=True)
class GatewayConfig(TokenConfig):
    http_port: int = setting("HTTP_PORT", 8080, "Port the HTTP server listens on.")
    users_service_url: str = setting(
        "USERS_SERVICE_URL", "http://127.0.0.1:8001", "users_service's base URL."
    )
    orders_service_url: str = setting(
        "ORDERS_SERVICE_URL", "http://127.0.0.1:8002", "orders_service's base URL."
    )
    upstream_timeout: float = setting(
        "UPSTREAM_TIMEOUT", 10.0, "Seconds an upstream call may take in all before the client gets 504."
    )
    upstream_connect_timeout: float = setting(
        "UPSTREAM_CONNECT_TIMEOUT", 2.0, "Seconds to open a connection to an upstream."
    )
