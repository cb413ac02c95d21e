from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.edge import parser_limits
from shared.service import run

config = GatewayConfig.from_env()
run("gateway", create_app, config, server_limits=parser_limits(config.max_url_bytes, config.max_header_bytes))
