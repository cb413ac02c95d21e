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
    upstream_retries: int = setting(
        "UPSTREAM_RETRIES",
        2,
        "Retries of a GET whose upstream refused the connection or answered 503 (never of a POST).",
    )
    upstream_retry_backoff: float = setting(
        "UPSTREAM_RETRY_BACKOFF", 0.05, "Seconds before the first retry; doubled each time, jittered."
    )
    circuit_failure_threshold: int = setting(
        "CIRCUIT_FAILURE_THRESHOLD",
        5,
        "Consecutive failures of an upstream that open its circuit (503 at once, without calling it).",
    )
    circuit_open_seconds: float = setting(
        "CIRCUIT_OPEN_SECONDS", 5.0, "Seconds an open circuit waits before letting one trial call through."
    )
    max_url_bytes: int = setting("MAX_URL_BYTES", 2048, "Longest request URL, path and query (414 above).")
    max_header_bytes: int = setting(
        "MAX_HEADER_BYTES", 8192, "Longest single request header, name and value (431 above)."
    )
    max_headers_total_bytes: int = setting(
        "MAX_HEADERS_TOTAL_BYTES", 16384, "Most bytes of all request headers together (431 above)."
    )
    rate_limit_per_second: float = setting(
        "RATE_LIMIT_PER_SECOND", 100.0, "Requests per second each client (IP address) may make (429 above)."
    )
    rate_limit_burst: int = setting(
        "RATE_LIMIT_BURST", 200, "Requests a client may make at once before RATE_LIMIT_PER_SECOND applies."
    )
    login_rate_limit_per_minute: int = setting(
        "LOGIN_RATE_LIMIT_PER_MINUTE",
        60,
        "Sign-ins (POST /api/auth/token) per minute each client may attempt; as many at once.",
    )
    cors_allowed_origins: str = setting(
        "CORS_ALLOWED_ORIGINS",
        "",
        "Comma-separated origins (https://app.example.com) whose browser pages may call the API; "
        "empty: none (CORS off).",
    )

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(origin.strip() for origin in self.cors_allowed_origins.split(",") if origin.strip())
