from pathlib import Path

from aiohttp import web

from orders_service.config import OrdersConfig
from orders_service.routes import routes
from shared.service import create_service_app


def create_app(config: OrdersConfig) -> web.Application:
    app = create_service_app(config, package_dir=Path(__file__).parent)
    app.router.add_routes(routes)
    return app
