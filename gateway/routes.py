"""The gateway's fixed routing table: every public operation, its upstream, and whether it needs a
token. Anything not listed here answers 404 (or 405 for a listed path) without reaching a service.

Version 2 (`/api/v2/...`) is the current API; version 1 (`/api/...`) is deprecated and answers until
its sunset (shared/api_versions.py). Which operations need a role, the services' contracts say, and
the services enforce: the gateway checks that a token is valid, not what it grants."""

import dataclasses

USERS = "users_service"
ORDERS = "orders_service"


@dataclasses.dataclass(frozen=True)
class Route:
    method: str
    path: str
    upstream: str
    authenticated: bool = True


ROUTES = (
    Route("POST", "/api/v2/users", USERS, authenticated=False),
    Route("POST", "/api/v2/auth/token", USERS, authenticated=False),
    Route("GET", "/api/v2/users/me", USERS),
    Route("GET", "/api/v2/users/{id}", USERS),
    Route("PUT", "/api/v2/users/{id}/credit-limit", USERS),
    Route("GET", "/api/v2/products", ORDERS, authenticated=False),
    Route("GET", "/api/v2/products/{sku}", ORDERS, authenticated=False),
    Route("PUT", "/api/v2/products/{sku}", ORDERS),
    Route("POST", "/api/v2/orders", ORDERS),
    Route("GET", "/api/v2/orders", ORDERS),
    Route("GET", "/api/v2/orders/{id}", ORDERS),
    Route("POST", "/api/v2/orders/{id}/cancel", ORDERS),
    # Version 1, deprecated.
    Route("POST", "/api/users", USERS, authenticated=False),
    Route("POST", "/api/auth/token", USERS, authenticated=False),
    Route("GET", "/api/users/me", USERS),
    Route("GET", "/api/users/{id}", USERS),
    Route("POST", "/api/orders", ORDERS),
    Route("GET", "/api/orders", ORDERS),
    Route("GET", "/api/orders/{id}", ORDERS),
    Route("POST", "/api/orders/{id}/cancel", ORDERS),
)
