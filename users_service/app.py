from pathlib import Path

from aiohttp import web

from shared.service import create_service_app
from users_service.config import UsersConfig
from users_service.handlers import HANDLERS
from users_service.passwords import PasswordHasher
from users_service.routes import LOGIN_THROTTLE, PASSWORD_HASHER, TOKEN_ISSUER, routes
from users_service.services import LoginThrottle
from users_service.tokens import TokenIssuer


def create_app(config: UsersConfig) -> web.Application:
    app = create_service_app(
        config, service="users_service", package_dir=Path(__file__).parent, handlers=HANDLERS
    )
    app[PASSWORD_HASHER] = PasswordHasher()
    app[TOKEN_ISSUER] = TokenIssuer.from_pem_file(
        config.jwt_private_key_file,
        issuer=config.jwt_issuer,
        audience=config.jwt_audience,
        ttl_seconds=config.jwt_ttl_seconds,
    )
    app[LOGIN_THROTTLE] = LoginThrottle(
        max_failures=config.login_max_failures, window_seconds=config.login_lockout_seconds
    )
    app.router.add_routes(routes)
    return app
