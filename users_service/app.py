from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from shared.app_keys import DB_POOL
from shared.metrics import METRICS
from shared.periodic import periodically
from shared.service import create_service_app
from users_service.config import UsersConfig
from users_service.handlers import HANDLERS
from users_service.passwords import PasswordHasher
from users_service.routes import (
    LOGIN_THROTTLE,
    NEW_USER_CREDIT_LIMIT_CENTS,
    PASSWORD_HASHER,
    TOKEN_ISSUER,
    routes,
)
from users_service.services import LoginThrottle, purge_ended_login_windows
from users_service.tokens import TokenIssuer

log = structlog.get_logger("users")


def create_app(config: UsersConfig) -> web.Application:
    app = create_service_app(
        config, service="users_service", package_dir=Path(__file__).parent, handlers=HANDLERS
    )

    async def password_hashing(app: web.Application) -> AsyncIterator[None]:
        app[PASSWORD_HASHER] = PasswordHasher(
            concurrency=config.password_hash_concurrency,
            queue_timeout=config.password_hash_queue_timeout,
            registry=app[METRICS].registry,
        )
        yield
        app[PASSWORD_HASHER].close()

    app.cleanup_ctx.append(password_hashing)
    app[TOKEN_ISSUER] = TokenIssuer.from_pem_file(
        config.jwt_private_key_file,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        ttl_seconds=config.jwt_ttl_seconds,
    )
    app[NEW_USER_CREDIT_LIMIT_CENTS] = config.new_user_credit_limit_cents
    app[LOGIN_THROTTLE] = LoginThrottle(
        max_failures=config.login_max_failures, window_seconds=config.login_lockout_seconds
    )
    app.cleanup_ctx.append(
        periodically(
            "purging ended sign-in counts", config.login_attempts_purge_seconds, _purge_ended_sign_in_counts
        )
    )
    app.router.add_routes(routes)
    return app


async def _purge_ended_sign_in_counts(app: web.Application) -> None:
    """Every replica does it, which is harmless (services.purge_ended_login_windows)."""
    deleted = await purge_ended_login_windows(app[DB_POOL], app[LOGIN_THROTTLE])
    if deleted:
        log.info("ended sign-in counts purged", count=deleted)
