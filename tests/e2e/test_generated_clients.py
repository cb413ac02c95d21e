"""Clients generated from the contracts, as a client's developer would make them, against the running
system: one from the contract the gateway serves (/openapi.json, both versions) works through
version 2, and one from the released contract (tests/e2e/version_1_contract.json, version 1
only: what clients in the field were generated from) still works during the deprecation window,
and is told on every answer that it is deprecated.

openapi-python-client (a dev dependency) generates each client package into a temporary folder,
once per module; the tests then call only its generated functions and models, no HTTP of their own.
Each generated function is found by its operation's operationId, as a client's developer finds it.
"""

import dataclasses
import importlib
import json
import pkgutil
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from devstack.waiting import eventually
from shared.api_versions import DEPRECATED
from tests.e2e.api import PASSWORD
from tests.e2e.conftest import Stack
from tests.support import run_python
from users_service.config import UsersConfig

# The public contract as version 1 was released (before version 2), which version 1's clients
# were built from: kept here as such a client keeps it, since shared/contracts/released/ moves on.
RELEASED_CONTRACT = Path(__file__).parent / "version_1_contract.json"
GENERATION_DEADLINE = 60.0  # seconds; a generation takes about one
DECISION_DEADLINE = 30.0
# The shared stack runs with the default policy (NEW_USER_CREDIT_LIMIT_CENTS unset).
POLICY_CREDIT_LIMIT_CENTS = UsersConfig.new_user_credit_limit_cents
# The generator's settings: no post hooks, which would run ruff (found on PATH) over the code to format
# it; this code is imported once and thrown away, so formatting it buys nothing.
GENERATOR_CONFIG: dict[str, list[str]] = {"post_hooks": []}
PACKAGE_PREFIX = "eda_client_"  # the generated packages' names start so


@dataclasses.dataclass(frozen=True)
class GeneratedClient:
    """A client package that openapi-python-client generated, imported, every module of it."""

    package: ModuleType
    operations: dict[str, ModuleType]  # module name (the operationId in snake case) -> its module

    @property
    def models(self) -> ModuleType:
        return importlib.import_module(f"{self.package.__name__}.models")

    def operation(self, operation_id: str) -> ModuleType:
        """The module of an operation's generated functions: `sync`, `asyncio` (the parsed answer) and
        their `_detailed` variants (a Response with its status code and headers as well)."""
        # The generator's own naming: registerUserV2 -> register_user_v2.
        return self.operations[re.sub(r"(?<!^)(?=[A-Z])", "_", operation_id).lower()]


async def generate(source: list[str], package: Path) -> None:
    """Run the generator's CLI, as a client's developer would, into folder `package`.

    `--fail-on-warning`: a part of the document that the generator cannot read, and so leaves out of
    the client with a warning, fails the test instead of going unnoticed."""
    config = package.with_suffix(".json")
    config.write_text(json.dumps(GENERATOR_CONFIG))
    generated = await run_python(
        "-m",
        "openapi_python_client",
        "generate",
        *source,
        "--output-path",
        str(package),
        "--meta",
        "none",  # the package alone, without a pyproject.toml around it
        "--config",
        str(config),
        "--fail-on-warning",
        within=GENERATION_DEADLINE,
    )
    assert generated.returncode == 0, (
        f"openapi-python-client {' '.join(source)} failed:\n{generated.stdout}{generated.stderr}"
    )


@dataclasses.dataclass
class Generated:
    """Where a module's clients are generated, and importable from while the module runs."""

    folder: Path
    patch: pytest.MonkeyPatch

    async def client(self, name: str, source: list[str]) -> GeneratedClient:
        await generate(source, self.folder / name)
        self.patch.syspath_prepend(str(self.folder))
        package = importlib.import_module(name)
        # Every module, so that a generated file that does not even import fails here, named.
        modules = [
            importlib.import_module(found.name)
            for found in pkgutil.walk_packages(package.__path__, prefix=f"{name}.")
        ]
        operations = {
            module.__name__.rpartition(".")[2]: module
            for module in modules
            if module.__name__.startswith(f"{name}.api.") and hasattr(module, "asyncio_detailed")
        }
        return GeneratedClient(package, operations)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Generated]:
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("generated-clients")
        yield Generated(folder, patch)
        # The packages are this module's: no later test may import them by accident.
        for name in [name for name in sys.modules if name.startswith(PACKAGE_PREFIX)]:
            del sys.modules[name]


@pytest.fixture(scope="module")
async def served_client(stack: Stack, generated: Generated) -> GeneratedClient:
    """From the contract the gateway serves, read by the generator from its URL."""
    return await generated.client(f"{PACKAGE_PREFIX}served", ["--url", f"{stack.url}/openapi.json"])


@pytest.fixture(scope="module")
async def released_client(generated: Generated) -> GeneratedClient:
    """From the released contract, version 1 only: what clients in the field were generated from."""
    return await generated.client(f"{PACKAGE_PREFIX}released", ["--path", str(RELEASED_CONTRACT)])


def new_email() -> str:
    return f"generated-{uuid.uuid4().hex[:10]}@example.com"


async def decided(client: GeneratedClient, signed_in: Any, get_order: str, order_id: uuid.UUID) -> Any:
    """The order once the saga has decided it, read with the generated `get_order` operation."""
    order_class = client.models.Order

    async def read() -> Any:
        order = await client.operation(get_order).asyncio(order_id, client=signed_in)
        assert isinstance(order, order_class), order
        return None if order.status.value == "PENDING" else order

    return await eventually(read, within=DECISION_DEADLINE, what=f"order {order_id} decided")


def deprecation_headers(headers: Any) -> dict[str, str | None]:
    """The deprecation headers as an answer carries them (None where one is missing)."""
    return {name: headers.get(name) for name in DEPRECATED.headers()}


async def test_a_client_generated_from_the_served_contract_orders_from_the_catalogue(
    stack: Stack, served_client: GeneratedClient
) -> None:
    api, models = served_client, served_client.models
    email = new_email()
    async with api.package.Client(base_url=stack.url, raise_on_unexpected_status=True) as public:
        user = await api.operation("registerUserV2").asyncio(
            client=public, body=models.NewUserV2(email=email, name="Generated V2", password=PASSWORD)
        )
        assert isinstance(user, models.User), user
        assert (user.email, user.credit_limit_cents) == (email, POLICY_CREDIT_LIMIT_CENTS)
        token = await api.operation("issueTokenV2").asyncio(
            client=public, body=models.Credentials(email=email, password=PASSWORD)
        )
        assert isinstance(token, models.AccessToken), token
        catalogue = await api.operation("listProducts").asyncio(client=public, limit=100)
        assert isinstance(catalogue, models.ProductPage), catalogue

    prices = {product.sku: product.price_cents for product in catalogue.items}
    cart = {"BOOK-42": 2, "INK-01": 3}  # seeded products (orders_service/migrations/004_products.sql)
    assert cart.keys() <= prices.keys(), f"not listed as sold: {cart.keys() - prices.keys()}"
    body = models.NewOrderV2(items=[models.NewItemV2(sku=sku, quantity=count) for sku, count in cart.items()])
    async with api.package.AuthenticatedClient(
        base_url=stack.url, token=token.access_token, raise_on_unexpected_status=True
    ) as signed_in:
        placed = await api.operation("placeOrderV2").asyncio_detailed(
            client=signed_in, body=body, idempotency_key=str(uuid.uuid4())
        )
        assert placed.status_code == 202, placed.content
        assert placed.headers["Location"] == f"/api/v2/orders/{placed.parsed.id}"
        order = await decided(api, signed_in, "getOrderV2", placed.parsed.id)

    assert (order.user_id, order.status.value) == (user.id, "APPROVED")
    assert [(item.sku, item.quantity, item.unit_price_cents) for item in order.items] == [
        (sku, count, prices[sku]) for sku, count in cart.items()
    ]
    assert order.total_cents == sum(prices[sku] * count for sku, count in cart.items())
    assert "Deprecation" not in placed.headers  # version 2 is current


async def test_a_client_generated_from_the_released_contract_still_works_and_is_told_it_is_deprecated(
    stack: Stack, released_client: GeneratedClient
) -> None:
    api, models = released_client, released_client.models
    email = new_email()
    announced = DEPRECATED.headers()
    async with api.package.Client(base_url=stack.url, raise_on_unexpected_status=True) as public:
        # Version 1 lets a client propose its credit limit; the server ignores it now (the policy's).
        registered = await api.operation("registerUser").asyncio_detailed(
            client=public,
            body=models.NewUser(email=email, name="Released V1", password=PASSWORD, credit_limit_cents=5_000),
        )
        assert registered.status_code == 201, registered.content
        assert registered.parsed.credit_limit_cents == POLICY_CREDIT_LIMIT_CENTS
        assert deprecation_headers(registered.headers) == announced
        signed = await api.operation("issueToken").asyncio_detailed(
            client=public, body=models.Credentials(email=email, password=PASSWORD)
        )
        assert signed.status_code == 200, signed.content
        assert deprecation_headers(signed.headers) == announced

    # Version 1's items carry their unit price, which must be the catalogue's (BOOK-42's is 12.50).
    body = models.NewOrder(items=[models.NewItem(sku="BOOK-42", quantity=2, unit_price_cents=1250)])
    async with api.package.AuthenticatedClient(
        base_url=stack.url, token=signed.parsed.access_token, raise_on_unexpected_status=True
    ) as signed_in:
        placed = await api.operation("placeOrder").asyncio_detailed(client=signed_in, body=body)
        assert placed.status_code == 202, placed.content
        assert placed.headers["Location"] == f"/api/orders/{placed.parsed.id}"
        assert deprecation_headers(placed.headers) == announced
        read = await api.operation("getOrder").asyncio_detailed(placed.parsed.id, client=signed_in)
        assert read.status_code == 200, read.content
        assert deprecation_headers(read.headers) == announced
        order = await decided(api, signed_in, "getOrder", placed.parsed.id)

    assert (order.id, order.user_id) == (placed.parsed.id, registered.parsed.id)
    assert (order.status.value, order.total_cents) == ("APPROVED", 2500)
