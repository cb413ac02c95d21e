import dataclasses

from shared.config import ConfigError, Secret, ServiceConfig, setting

MAX_CREDIT_LIMIT_CENTS = 10_000_000


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
    jwt_ttl_seconds: int = setting(
        "JWT_TTL_SECONDS",
        900,
        "Lifetime of an access token; a role granted or revoked takes effect with the user's next one.",
    )
    new_user_credit_limit_cents: int = setting(
        "NEW_USER_CREDIT_LIMIT_CENTS",
        100_000,
        "The credit limit every new user gets (the policy: clients do not choose it); an admin changes"
        " a user's limit with PUT /api/v2/users/{id}/credit-limit.",
    )
    login_max_failures: int = setting(
        "LOGIN_MAX_FAILURES",
        5,
        "Failed sign-ins for one email from one client (an IPv4 address or an IPv6 /64) within"
        " `LOGIN_LOCKOUT_SECONDS` before that client's further attempts for that email answer 429;"
        " the owner, signing in from elsewhere, is not locked out.",
    )
    login_lockout_seconds: int = setting(
        "LOGIN_LOCKOUT_SECONDS",
        900,
        "Window counted from the first failed sign-in of an email and client; once it is over the"
        " limit, that client's sign-ins for that email wait until the window ends.",
    )
    login_attempts_purge_seconds: float = setting(
        "LOGIN_ATTEMPTS_PURGE_SECONDS",
        300.0,
        "How often the sign-in counts whose window has ended are deleted (a bounded batch at a time).",
    )
    # Memory: an argon2id hash holds 64 MiB while it runs (argon2-cffi's default memory cost, RFC
    # 9106's second recommended setting), and the process needs about 70 MiB besides. So its peak is
    # about 70 MiB + PASSWORD_HASH_CONCURRENCY × 64 MiB: 2 → ~200 MiB, 4 → ~330 MiB, 8 → ~590 MiB.
    # Choose it from the memory limit: (limit − 70 MiB − headroom) / 64 MiB. More than the CPUs
    # given to the process buys no throughput either (each hash is CPU-bound for its whole run).
    password_hash_concurrency: int = setting(
        "PASSWORD_HASH_CONCURRENCY",
        4,
        "Password hashes (registrations, sign-ins) run at once; each holds 64 MiB while it runs, so"
        " size it to the memory limit: about 70 MiB + this × 64 MiB.",
    )
    password_hash_queue_timeout: float = setting(
        "PASSWORD_HASH_QUEUE_TIMEOUT",
        2.0,
        "Seconds a registration or sign-in waits for a free hashing slot before it is answered 503"
        " with Retry-After.",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # The same bounds as the limit an admin may set (users_service/openapi.yaml).
        if not 0 <= self.new_user_credit_limit_cents <= MAX_CREDIT_LIMIT_CENTS:
            raise ConfigError(f"NEW_USER_CREDIT_LIMIT_CENTS must be within 0..{MAX_CREDIT_LIMIT_CENTS}")
