from gateway.app import create_app
from gateway.config import GatewayConfig
from shared.service import run

run("gateway", create_app, GatewayConfig.from_env())
