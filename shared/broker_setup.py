"""The broker's users, permissions and policies, made from the bus's contract and applied where the
system runs:

    python -m shared.broker_setup

`make dev` runs it (`make broker`) against the local RabbitMQ, compose runs it once at start (the
`broker-setup` service), devstack for each stack of the tests; Kubernetes declares the same in the
Messaging Topology Operator's resources (deploy/k8s/base/rabbitmq-access.yaml, which a unit test
holds to `plan()`). It is idempotent: running it again changes nothing, or repairs what was changed.

Who may do what (in the one virtual host the system uses):

- each service is a broker user of its own, named after it (`users_service`, `orders_service`,
  `gateway`). It may declare the `events` exchange, its own queues (`<service>`, `<service>.retry.*`,
  `<service>.dlq`) and the queues of the services that receive what it publishes; publish to
  `events` only the event types it owns (a topic permission: the broker refuses any other routing
  key), and to its own queues through the default exchange (its retries and dead letters); and read
  only its own queues. The broker checks the `user-id` property of every message against the user
  who publishes it, and consumers accept each type from its publisher only (shared/consumer.py).
- the operator (`RABBITMQ_OPERATOR_USER`) is the tools' user (`make dlq`, `make dlq-replay`, the
  demo): it may read and write every queue of the virtual host, and, as an impersonator, replay a
  message under the identity of the service that sent it, so that a replay stays authentic.
- the administrator, who runs this and signs in to the management UI, is neither.

Policies carry what operators tune and what two versions of a service might disagree on, so that no
declaration has to (shared/topology.py): each consumer queue's delivery limit (after which a message
that crashes its consumer every time is dead-lettered by the broker), its dead-lettering into its
`.dlq` (at least once), its bound; and the dead-letter queues' lack of a delivery limit (RabbitMQ 4
would give them one of 20, and listing the dead letters counts as deliveries there).
"""

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import sys
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from yarl import URL

from shared.bus_contract import BusContract, bus
from shared.config import BaseConfig, ConfigError, Secret, setting
from shared.logging import configure_logging
from shared.topology import EXCHANGE, QUORUM, ConsumerQueues

FIREHOSE = "amq.rabbitmq.trace"  # where the broker copies every message published, when tracing is on

log = structlog.get_logger("broker_setup")

POLICY_PRIORITY = 10  # above an operator's catch-all policies (priority 0), below deliberate overrides
# Messages a consumer queue holds before the broker refuses more (the relay then keeps the events in
# its outbox and tries again later): a bound far above any backlog this system reaches, that still
# keeps a runaway producer from filling the broker's disk.
QUEUE_MAX_LENGTH = 1_000_000
# What each user may read from `events` by routing key: anything its permissions let it bind. What
# it may publish there is the part that matters (Access.publish_types).
TOPIC_READ = ".*"
AMQP_PORT = 5672


@dataclasses.dataclass(frozen=True)
class BrokerSetupConfig(BaseConfig):
    rabbitmq_management_url: str = setting(
        "RABBITMQ_MANAGEMENT_URL",
        "http://127.0.0.1:15672",
        "The broker's management API, where the setup is applied.",
        local=True,
    )
    rabbitmq_admin_user: str = setting("RABBITMQ_ADMIN_USER", "guest", "The administrator who applies it.")
    rabbitmq_admin_password: Secret = setting(
        "RABBITMQ_ADMIN_PASSWORD", Secret("guest"), "The administrator's password."
    )
    rabbitmq_vhost: str = setting(
        "RABBITMQ_VHOST", "/", "The virtual host the system uses (made if missing)."
    )
    rabbitmq_service_passwords: Secret = setting(
        "RABBITMQ_SERVICE_PASSWORDS",
        Secret(""),
        "Each service's broker password, `users_service=...,orders_service=...,gateway=...`; a service"
        " left out gets its own name as its password (local development only).",
    )
    rabbitmq_operator_user: str = setting(
        "RABBITMQ_OPERATOR_USER", "operator", "The tools' user (make dlq, the demo)."
    )
    rabbitmq_operator_password: Secret = setting(
        "RABBITMQ_OPERATOR_PASSWORD", Secret("operator"), "The tools' user's password."
    )
    delivery_limit: int = setting(
        "DELIVERY_LIMIT", 20, "Redeliveries (crashes mid-message) before the broker dead-letters a message."
    )
    rabbitmq_firehose: bool = setting(
        "RABBITMQ_FIREHOSE",
        True,
        "Have the broker copy every message to amq.rabbitmq.trace, where a gateway's flow page reads"
        " events (development only: every message is copied once more).",
    )

    def refuse_default_secrets(self) -> None:
        super().refuse_default_secrets()
        if self.environment != "development":
            missing = [s for s in bus().services if s not in self.service_passwords()]
            if missing:
                raise ConfigError(
                    f"ENVIRONMENT={self.environment}: set RABBITMQ_SERVICE_PASSWORDS for {missing}"
                )

    def service_passwords(self) -> dict[str, str]:
        given = dict(
            pair.split("=", 1) for pair in self.rabbitmq_service_passwords.value.split(",") if "=" in pair
        )
        return {service.strip(): password for service, password in given.items()}

    def password_of(self, service: str) -> str:
        return self.service_passwords().get(service, service)


@dataclasses.dataclass(frozen=True)
class Access:
    """One user's rights in the virtual host: regular expressions over names, as RabbitMQ takes them."""

    user: str
    tags: str
    configure: str
    write: str
    read: str
    publish_types: str  # the routing keys it may publish to `events` (topic permission)


@dataclasses.dataclass(frozen=True)
class Policy:
    name: str
    pattern: str
    definition: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Plan:
    access: list[Access]
    policies: list[Policy]


def _names(*names: str) -> str:
    return "^(" + "|".join(names) + ")$"


def _own(service: str) -> str:
    return rf"{re.escape(service)}(\..+)?"


def plan(contract: BusContract, *, operator: str, delivery_limit: int, broker_major: int) -> Plan:
    """Everything the broker must hold for the system, from the contract."""
    access = []
    consumers = {name for names in contract.receivers.values() for name in names}
    for service in contract.services:
        receivers = [re.escape(receiver) for receiver in contract.receivers_of_what(service)]
        sends = [re.escape(event_type) for event_type in contract.sends(service)]
        # On the bus: it declares `events` and publishes there, or has a queue bound to it.
        bus_party = [EXCHANGE] if sends or service in consumers else []
        # Publishing to the default exchange (a consumer's retries and dead letters) takes write on
        # amq.default; binding a queue takes write on the queue.
        default_exchange = [r"amq\.default"] if service in consumers else []
        # A watcher (the flow page) binds its queue to the firehose, where the copies are.
        firehose = [re.escape(FIREHOSE)] if service in contract.watchers else []
        access.append(
            Access(
                user=service,
                tags="",
                configure=_names(*bus_party, _own(service), *receivers),
                write=_names(*bus_party, *default_exchange, _own(service), *receivers),
                read=_names(*bus_party, _own(service), *firehose),
                publish_types=_names(*sends) if sends else "^$",
            )
        )
    access.append(
        Access(user=operator, tags="impersonator", configure="^$", write=".*", read=".*", publish_types=".*")
    )
    policies = []
    for receiver in sorted({name for names in contract.receivers.values() for name in names}):
        policies.append(
            Policy(
                f"eda.{receiver}",
                f"^{re.escape(receiver)}$",
                {
                    "delivery-limit": delivery_limit,
                    "dead-letter-exchange": "",
                    "dead-letter-routing-key": f"{receiver}.dlq",
                    "dead-letter-strategy": "at-least-once",
                    "overflow": "reject-publish",
                    "max-length": QUEUE_MAX_LENGTH,
                },
            )
        )
        # RabbitMQ 4 reads -1 as "no limit"; 3 sets none by itself and reads -1 as a limit below zero.
        if broker_major >= 4:
            policies.append(
                Policy(f"eda.{receiver}.dlq", rf"^{re.escape(receiver)}\.dlq$", {"delivery-limit": -1})
            )
    return Plan(access, policies)


class ManagementError(RuntimeError):
    """The management API answered with an error status."""

    def __init__(self, method: str, path: str, status: int, text: str) -> None:
        super().__init__(f"{method} /api/{path}: {status} {text}")
        self.status = status


class BrokerSetupError(Exception):
    """The broker cannot be set up from here; the message says why and what to do."""


class ManagementApi:
    """The parts of RabbitMQ's management HTTP API that setting the broker up needs."""

    def __init__(self, base_url: str, user: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._authorization = aiohttp.encode_basic_auth(user, password)
        self._session: aiohttp.ClientSession | None = None

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": self._authorization}, timeout=aiohttp.ClientTimeout(total=30)
            )
        async with self._session.request(method, f"{self.base_url}/api/{path}", json=body) as response:
            if response.status >= 400:
                raise ManagementError(method, path, response.status, await response.text())
            return await response.json() if response.content_type == "application/json" else None

    async def broker_major(self) -> int:
        overview = await self.request("GET", "overview")
        return int(str(overview["rabbitmq_version"]).split(".")[0])

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def permissions_of(rights: Access) -> dict[str, str]:
    """The user's permissions in the virtual host, as the management API and the Messaging Topology
    Operator's `Permission` take them (deploy/k8s/base/rabbitmq-access.yaml)."""
    return {"configure": rights.configure, "write": rights.write, "read": rights.read}


def topic_permissions_of(rights: Access) -> dict[str, str]:
    """The user's topic permissions on `events`, as the management API and the Messaging Topology
    Operator's `TopicPermission` take them."""
    return {"exchange": EXCHANGE, "write": rights.publish_types, "read": TOPIC_READ}


def policy_settings(policy: Policy) -> dict[str, Any]:
    """The policy as the management API takes it (the Messaging Topology Operator's `Policy` names
    `apply-to` `applyTo`)."""
    return {
        "pattern": policy.pattern,
        "definition": policy.definition,
        "priority": POLICY_PRIORITY,
        "apply-to": "queues",
    }


async def apply(
    management: ManagementApi, vhost: str, setup: Plan, passwords: dict[str, str], *, firehose: bool
) -> None:
    """Make the broker hold `setup` in `vhost` (idempotent); `passwords` by user. The firehose copies
    every message published, for the flow page: it watches without a binding of its own on `events`,
    which would make every event routable and a missing consumer queue unnoticeable."""
    await management.request("PUT", f"vhosts/{quote(vhost, safe='')}", {"tracing": firehose})
    await apply_access(management, vhost, setup.access, passwords)
    await apply_policies(management, vhost, setup.policies)
    log.info("broker set up", vhost=vhost, users=[a.user for a in setup.access], policies=len(setup.policies))


async def apply_access(
    management: ManagementApi, vhost: str, access: list[Access], passwords: dict[str, str]
) -> None:
    v = quote(vhost, safe="")
    for rights in access:
        user = quote(rights.user, safe="")
        await management.request(
            "PUT", f"users/{user}", {"password": passwords[rights.user], "tags": rights.tags}
        )
        await management.request("PUT", f"permissions/{v}/{user}", permissions_of(rights))
        await management.request("PUT", f"topic-permissions/{v}/{user}", topic_permissions_of(rights))


async def apply_policies(management: ManagementApi, vhost: str, policies: list[Policy]) -> None:
    v = quote(vhost, safe="")
    for policy in policies:
        await management.request(
            "PUT", f"policies/{v}/{quote(policy.name, safe='')}", policy_settings(policy)
        )


async def set_up(config: BrokerSetupConfig) -> None:
    management = ManagementApi(
        config.rabbitmq_management_url, config.rabbitmq_admin_user, config.rabbitmq_admin_password.value
    )
    try:
        setup = plan(
            bus(),
            operator=config.rabbitmq_operator_user,
            delivery_limit=config.delivery_limit,
            broker_major=await _broker_major(management, config),
        )
        passwords = {service: config.password_of(service) for service in bus().services}
        passwords[config.rabbitmq_operator_user] = config.rabbitmq_operator_password.value
        await apply(management, config.rabbitmq_vhost, setup, passwords, firehose=config.rabbitmq_firehose)
        await check_queues_declarable(management, config.rabbitmq_vhost, bus())
    finally:
        await management.close()


async def check_queues_declarable(management: ManagementApi, vhost: str, contract: BusContract) -> None:
    """Say what to do on a broker that an earlier version of the services used, where they could not
    start.

    A consumer queue and its dead-letter queue are declared with nothing but their type now; what
    they once carried as arguments (delivery limit, dead-lettering, bounds) the policies carry. The
    broker refuses to declare a queue again with other arguments (PRECONDITION_FAILED, inequivalent
    arg), and so the service. Such a queue is never deleted here: it may hold messages, or be
    receiving them (quorum queues cannot be deleted only-if-empty, and the management API's counts
    lag by seconds); a person decides."""
    v = quote(vhost, safe="")
    outdated = []
    receivers = sorted({name for names in contract.receivers.values() for name in names})
    for queues in (ConsumerQueues(receiver, ()) for receiver in receivers):
        for name in (queues.main, queues.dead_letter):
            try:
                queue = await management.request("GET", f"queues/{v}/{quote(name, safe='')}")
            except ManagementError as error:
                if error.status == 404:
                    continue  # its service declares it
                raise
            if queue["arguments"] != QUORUM:
                outdated.append(queue)
    if outdated:
        raise BrokerSetupError(
            "\n".join(
                [
                    "The services cannot declare these queues, which an earlier version of them declared"
                    " with arguments that the policies carry now:",
                    *(
                        f"    {queue['name']}: {queue.get('messages', 'unknown')} messages,"
                        f" {queue.get('consumers', 'unknown')} consumers, arguments {queue['arguments']}"
                        for queue in outdated
                    ),
                    "Stop the services of the earlier version, replay or keep elsewhere what the queues"
                    " hold, delete them (each service declares its own again), and run this again:",
                    *(f"    rabbitmqctl -p {vhost} delete_queue {queue['name']}" for queue in outdated),
                ]
            )
        )


async def _broker_major(management: ManagementApi, config: BrokerSetupConfig) -> int:
    """The broker's major version: the first call, so a broker that cannot be set up from here is
    explained rather than shown as a traceback."""
    try:
        return await management.broker_major()
    except aiohttp.ClientConnectionError as error:
        raise BrokerSetupError(await why_unreachable(management.base_url, error)) from None
    except ManagementError as error:
        if error.status != 401:
            raise
        raise BrokerSetupError(
            f"The management API at {management.base_url} refused RABBITMQ_ADMIN_USER="
            f"{config.rabbitmq_admin_user} (a wrong password, no such user, or not an administrator;"
            " `guest` may sign in from the broker's own machine only). Name an administrator of this"
            " broker with RABBITMQ_ADMIN_USER and RABBITMQ_ADMIN_PASSWORD."
        ) from None


async def why_unreachable(management_url: str, error: Exception, *, amqp_port: int | None = None) -> str:
    """Why nothing answers at the management API, and what to run: RabbitMQ may be running without
    its management plugin (Debian and Ubuntu install it that way), or not be there at all. AMQP is
    looked for on the same host, on its standard port unless told otherwise."""
    host = URL(management_url).host or "127.0.0.1"
    amqp_port = AMQP_PORT if amqp_port is None else amqp_port
    failure = error.os_error if isinstance(error, aiohttp.ClientConnectorError) else None
    reason = os.strerror(failure.errno).lower() if failure is not None and failure.errno else str(error)
    sudo = "" if os.geteuid() == 0 else "sudo "
    enable = f"    {sudo}rabbitmq-plugins enable rabbitmq_management"
    if await _answers(host, amqp_port):
        return "\n".join(
            [
                f"RabbitMQ answers on {host}:{amqp_port}, but its management API at {management_url}"
                f" does not ({reason}): its management plugin is off, as Debian and Ubuntu install it."
                " Turn it on (the broker goes on running), then run this again:",
                enable,
            ]
        )
    return "\n".join(
        [
            f"No RabbitMQ answers on {host}: neither its management API at {management_url} ({reason})"
            f" nor AMQP on port {amqp_port}. Install one and turn its management plugin on (Debian"
            " and Ubuntu start the broker at once), or name yours with RABBITMQ_MANAGEMENT_URL:",
            f"    {sudo}apt-get install rabbitmq-server",
            enable,
        ]
    )


async def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError, TimeoutError):
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=2)
        writer.close()
        return True
    return False


def service_url(broker_url: str, service: str, password: str) -> str:
    """`broker_url` (any user's) as `service` signs in."""
    return str(URL(broker_url).with_user(service).with_password(password))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m shared.broker_setup",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    try:
        config = BrokerSetupConfig.from_env()
    except ConfigError as error:
        parser.error(str(error))
    configure_logging(service="broker_setup", level=config.log_level, fmt=config.log_format)
    try:
        asyncio.run(set_up(config))
    except BrokerSetupError as error:
        print(f"{parser.prog}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
