"""The gateway's fixed table and the services' contracts must describe the same public API."""

from pathlib import Path

from gateway.routes import ORDERS, ROUTES, USERS
from shared.openapi import OpenApiSpec

ROOT = Path(__file__).resolve().parents[2]
HEALTH = {"/healthz", "/readyz", "/metrics"}  # each process's own; the gateway does not forward them


def contract_operations(service: str) -> dict[tuple[str, str], bool]:
    """(method, path) -> whether the operation requires a token, from the service's OpenAPI."""
    spec = OpenApiSpec.load(ROOT / service / "openapi.yaml")
    return {key: operation.secured for key, operation in spec.operations.items() if key[1] not in HEALTH}


def test_every_route_is_in_its_service_contract_and_every_operation_is_routed() -> None:
    for service in (USERS, ORDERS):
        routed = {(r.method, r.path): r.authenticated for r in ROUTES if r.upstream == service}
        assert routed == contract_operations(service), service
