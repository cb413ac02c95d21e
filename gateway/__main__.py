from gateway.app import create_app
from gateway.config import GatewayConfig
from gateway.edge import server_limits
from shared.service import run

config = GatewayConfig.from_env()
run(
    "gateway",
    create_app,
    config,
    server_limits=server_limits(
        max_url_bytes=config.max_url_bytes,
        max_header_bytes=config.max_header_bytes,
        header_timeout=config.header_timeout,
    ),
)
