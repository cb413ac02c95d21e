from orders_service.app import create_app
from orders_service.config import OrdersConfig
from shared.service import run

run("orders_service", create_app, OrdersConfig.from_env())
