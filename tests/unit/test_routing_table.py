"""The gateway's fixed table and the services' contracts must describe the same public API."""

from pathlib import Path

import yaml

from gateway.routes import ORDERS, ROUTES, USERS

ROOT = Path(__file__).resolve().parents[2]


def contract_operations(service: str) -> dict[tuple[str, str], bool]:
    """(method, path) -> whether the operation requires a token, from the service's OpenAPI."""
    document = yaml.safe_load((ROOT / service / "openapi.yaml").read_text())
    default_security = document.get("security", [])
    return {
        (method.upper(), path): bool(operation.get("security", default_security))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    }


def test_every_route_is_in_its_service_contract_and_every_operation_is_routed() -> None:
    for service in (USERS, ORDERS):
        routed = {(r.method, r.path): r.authenticated for r in ROUTES if r.upstream == service}
        assert routed == contract_operations(service), service
