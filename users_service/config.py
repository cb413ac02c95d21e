import dataclasses

from shared.config import Secret, ServiceConfig, setting


@dataclasses.dataclass(frozen=True)
class UsersConfig(ServiceConfig):
    http_port: int = setting("HTTP_PORT", 8001, "Port the HTTP server listens on.")
    database_url: Secret = setting(
        "DATABASE_URL",
        Secret("postgresql://users_svc:users_svc@127.0.0.1:5432/users"),
        "users_service's own database and role.",
        local=True,
    )
    rabbitmq_url: Secret = setting(
        "RABBITMQ_URL",
        Secret("amqp://users_service:users_service@127.0.0.1:5672/"),
        "The broker, as users_service's own user (shared/broker_setup.py).",
        local=True,
    )
    jwt_private_key_file: str = setting(
        "JWT_PRIVATE_KEY_FILE",
        ".keys/jwt-private.pem",
        "Ed25519 private key (PEM) that signs tokens.",
        local=True,
    )
    jwt_ttl_seconds: int = setting("JWT_TTL_SECONDS", 900, "Lifetime of an access token.")
    login_max_failures: int = setting(
        "LOGIN_MAX_FAILURES",
        5,
        "Failed sign-ins for one email within `LOGIN_LOCKOUT_SECONDS` before further attempts answer 429.",
    )
    login_lockout_seconds: int = setting(
        "LOGIN_LOCKOUT_SECONDS",
        900,
        "Window counted from an email's first failed sign-in; once it is over the limit, sign-ins"
        " wait until the window ends.",
    )
