import dataclasses
import ipaddress

from shared.config import ConfigError, DatabaseConfig, Secret, TokenConfig, setting


@dataclasses.dataclass(frozen=True)
class GatewayConfig(TokenConfig, DatabaseConfig):
    http_port: int = setting("HTTP_PORT", 8080, "Port the HTTP server listens on.")
    users_service_url: str = setting(
        "USERS_SERVICE_URL", "http://127.0.0.1:8001", "users_service's base URL.", local=True
    )
    orders_service_url: str = setting(
        "ORDERS_SERVICE_URL", "http://127.0.0.1:8002", "orders_service's base URL.", local=True
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
    request_body_timeout: float = setting(
        "REQUEST_BODY_TIMEOUT",
        10.0,
        "Seconds a client may take to send a request's body, which the gateway reads whole before it"
        " calls the service (408 above).",
    )
    header_timeout: float = setting(
        "HEADER_TIMEOUT",
        15.0,
        "Seconds a client connection may take to send a request's line and headers, counted from when"
        " it opened or its last answer was sent; also how long an idle connection is kept. Behind a"
        " proxy that keeps connections to the gateway open, set it above that proxy's idle timeout.",
    )
    max_url_bytes: int = setting("MAX_URL_BYTES", 2048, "Longest request URL, path and query (414 above).")
    max_header_bytes: int = setting(
        "MAX_HEADER_BYTES", 8192, "Longest single request header, name and value (431 above)."
    )
    max_headers_total_bytes: int = setting(
        "MAX_HEADERS_TOTAL_BYTES", 16384, "Most bytes of all request headers together (431 above)."
    )
    database_url: Secret = setting(
        "DATABASE_URL",
        Secret("postgresql://gateway_svc:gateway_svc@127.0.0.1:5432/gateway"),
        "The gateway's own database: the rate limits all its replicas share.",
        local=True,
    )
    rate_limit_per_second: float = setting(
        "RATE_LIMIT_PER_SECOND",
        100.0,
        "Requests per second each client (an IPv4 address, or an IPv6 /64) may make (429 above); 0 turns"
        " every limit off"
        " (and the gateway then needs no database).",
    )
    rate_limit_burst: int = setting(
        "RATE_LIMIT_BURST", 200, "Requests a client may make at once before RATE_LIMIT_PER_SECOND applies."
    )
    rate_limit_lease: int = setting(
        "RATE_LIMIT_LEASE",
        10,
        "Tokens a replica takes from a client's shared bucket at once: 1 database call per this many"
        " requests, for at most as many requests over the limit per replica.",
    )
    trusted_proxies: str = setting(
        "TRUSTED_PROXIES",
        "",
        "Comma-separated networks (10.0.0.0/8) of proxies in front of the gateway whose X-Forwarded-For"
        " names the client for its rate limits; empty: the peer address is the client.",
    )
    login_rate_limit_per_minute: int = setting(
        "LOGIN_RATE_LIMIT_PER_MINUTE",
        60,
        "Sign-ins (POST /api/auth/token) per minute each client may attempt; as many at once.",
    )
    registration_rate_limit_per_minute: int = setting(
        "REGISTRATION_RATE_LIMIT_PER_MINUTE",
        30,
        "Registrations (POST /api/users) per minute each client may attempt; as many at once. Each"
        " costs users_service a password hash (64 MiB of memory while it runs).",
    )
    cors_allowed_origins: str = setting(
        "CORS_ALLOWED_ORIGINS",
        "",
        "Comma-separated origins (https://app.example.com) whose browser pages may call the API; "
        "empty: none (CORS off).",
    )
    rabbitmq_url: Secret = setting(
        "RABBITMQ_URL",
        Secret("amqp://gateway:gateway@127.0.0.1:5672/"),
        "The broker, as the gateway's own user, where the flow page's tap reads every event (the API"
        " itself never uses it).",
        local=True,
    )
    flow_enabled: bool = setting(
        "FLOW_ENABLED",
        True,
        "Serve the live flow page at /flow (every request and event, data included); development only.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            _ = self.trusted_proxy_networks
        except ValueError as error:  # refused at start, not at the first request
            raise ConfigError(f"TRUSTED_PROXIES={self.trusted_proxies!r}: {error}") from None

    def refuse_default_secrets(self) -> None:
        # The flow page shows every event's data, and no sign-in guards it: outside development,
        # anyone who reaches the gateway would read everyone's orders.
        if self.environment != "development" and self.flow_enabled:
            raise ConfigError(
                f"ENVIRONMENT={self.environment}: set FLOW_ENABLED=false; the flow page shows every "
                "event's data to anyone who reaches the gateway"
            )
        super().refuse_default_secrets()

    def unused_settings(self) -> set[str]:
        # Only the flow page connects to the broker, and only the rate limits to the database.
        unused = set()
        if not self.flow_enabled:
            unused.add("rabbitmq_url")
        if not self.rate_limited:
            unused.add("database_url")
        return unused

    @property
    def rate_limited(self) -> bool:
        return self.rate_limit_per_second > 0

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(
            ipaddress.ip_network(net.strip()) for net in self.trusted_proxies.split(",") if net.strip()
        )

    @property
    def cors_origins(self) -> frozenset[str]:
        return frozenset(origin.strip() for origin in self.cors_allowed_origins.split(",") if origin.strip())
