"""Fixtures every kind of test may use: the run's own Postgres and RabbitMQ, a signing key pair.

The servers are the suite's own (devstack/servers.py says how they are chosen, and the first lines
of the run say which): containers or private instances, started once for the session and removed at
the end. Servers of yours are used only when you name them, and then the tests that would restart,
kill or pause them are skipped. Nothing the suite runs may fall back on this machine's development
set-up (tests/isolation.py).
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from devstack.keys import KeyPair, make_key_pair
from devstack.rabbitmq import Vhost
from devstack.servers import Choice, NoServers, Servers, choose, started
from shared.auth import TokenVerifier
from tests import isolation
from users_service.tokens import TokenIssuer

TESTS = Path(__file__).resolve().parent
SERVER_CHOICE = pytest.StashKey[Choice | NoServers]()
# Markers every test of a folder, or every test that uses a fixture, carries, so that `-m` selects
# by what a test needs: `-m "not e2e"` leaves out every test that starts the system's processes.
FOLDER_MARKERS = {"e2e": "e2e", "abuse": "e2e", "chaos": "e2e", "bench": "bench", "cluster": "cluster"}
FIXTURE_MARKERS = {"stack": "e2e", "fresh_stack": "e2e", "fault_servers": "faults"}
_session_patch = pytest.MonkeyPatch()


def pytest_configure(config: pytest.Config) -> None:
    isolation.isolate(_session_patch)
    try:
        config.stash[SERVER_CHOICE] = asyncio.run(choose())
    except NoServers as reason:
        config.stash[SERVER_CHOICE] = reason


def pytest_unconfigure(config: pytest.Config) -> None:
    _session_patch.undo()


def pytest_report_header(config: pytest.Config) -> str:
    choice = config.stash[SERVER_CHOICE]
    if isinstance(choice, NoServers):
        return f"servers: none ({choice}); the tests that need them will fail"
    return f"servers: {choice.describe()}; override with DEVSTACK_SERVERS (devstack/servers.py)"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by them
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKERS:
            item.add_marker(FOLDER_MARKERS[folder])
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in FIXTURE_MARKERS:
                item.add_marker(FIXTURE_MARKERS[fixture])


@pytest.fixture(scope="session")
async def servers(pytestconfig: pytest.Config) -> AsyncIterator[Servers]:
    """The run's Postgres and RabbitMQ, started once, removed at the end of the session."""
    choice = pytestconfig.stash[SERVER_CHOICE]
    if isinstance(choice, NoServers):
        raise choice
    async with started(choice) as running:
        yield running


@pytest.fixture
def fault_servers(servers: Servers) -> Servers:
    """The servers, for a test that restarts, kills or pauses them: never servers of yours."""
    if not servers.can_inject_faults:
        pytest.skip("the servers are yours (DEVSTACK_SERVERS=external): this test would restart them")
    return servers


@pytest.fixture(scope="session")
def key_pair(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("keys"))


ISSUER, AUDIENCE = "eda-reference/users", "eda-reference"  # the services' defaults


@pytest.fixture
def issuer(key_pair: KeyPair) -> TokenIssuer:
    """Signs tokens as users_service does."""
    return TokenIssuer.from_pem_file(key_pair.private, issuer=ISSUER, audience=AUDIENCE, ttl_seconds=60)


@pytest.fixture
def verifier(key_pair: KeyPair) -> TokenVerifier:
    """Verifies tokens as every process does."""
    return TokenVerifier.from_pem_file(key_pair.public, issuer=ISSUER, audience=AUDIENCE)


CreateDatabase = Callable[[str], Awaitable[str]]


@pytest.fixture
async def create_database(servers: Servers) -> AsyncIterator[CreateDatabase]:
    """Make empty databases that are dropped after the test; each call returns a superuser's DSN."""
    created: list[str] = []

    async def create(prefix: str) -> str:
        dsn = await servers.postgres.create_database(f"test_{prefix}")
        created.append(dsn.rpartition("/")[2])
        return dsn

    yield create
    await servers.postgres.drop_databases(created)


@pytest.fixture
async def broker(servers: Servers) -> AsyncIterator[Vhost]:
    """A RabbitMQ virtual host of the test's own, set up as the system's is (users, permissions,
    policies): its queues see no other test's events; `broker.url_for(service)` signs in as one."""
    async with servers.rabbitmq.vhost() as vhost:
        yield vhost


@pytest.fixture
def rabbitmq_url(broker: Vhost) -> str:
    """The test's virtual host, as its administrator."""
    return broker.admin_url


@pytest.fixture(scope="session")
def project_root() -> Path:
    return TESTS.parent
