"""The gateway's fixed routing table: every public operation, its upstream, and whether it needs a
token. Anything not listed here answers 404 (or 405 for a listed path) without reaching a service."""

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
    Route("POST", "/api/users", USERS, authenticated=False),
    Route("POST", "/api/auth/token", USERS, authenticated=False),
    Route("GET", "/api/users/me", USERS),
    Route("GET", "/api/users/{id}", USERS),
    Route("POST", "/api/orders", ORDERS),
    Route("GET", "/api/orders", ORDERS),
    Route("GET", "/api/orders/{id}", ORDERS),
    Route("POST", "/api/orders/{id}/cancel", ORDERS),
)
