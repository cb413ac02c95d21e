from pathlib import Path

from aiohttp import web

from orders_service.config import OrdersConfig
from orders_service.handlers import HANDLERS
from orders_service.routes import routes
from shared.service import create_service_app


def create_app(config: OrdersConfig) -> web.Application:
    app = create_service_app(
        config, service="orders_service", package_dir=Path(__file__).parent, handlers=HANDLERS
    )
    app.router.add_routes(routes)
    return app
