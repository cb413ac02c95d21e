"""The security table runs against the real thing: the integration fixtures (apps in-process on real
Postgres and RabbitMQ) and the end-to-end ones (processes, through the gateway), shared, not copied."""

from tests.e2e.conftest import http, stack
from tests.integration.conftest import (
    contract_violations,
    orders_client,
    token_for,
    users_client,
    users_config,
)

__all__ = [
    "contract_violations",
    "http",
    "orders_client",
    "stack",
    "token_for",
    "users_client",
    "users_config",
]
