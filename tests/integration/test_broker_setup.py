"""`python -m shared.broker_setup` (`make broker`, compose's broker-setup) on a broker that an earlier
version of the services used, whose consumer queues carry as arguments what the policies carry now:
the services could not declare them again, and the set-up says so, and what to run. Each test in a
vhost of its own, set up as the system's is."""

from typing import Any

import aio_pika
import aiormq
import pytest
from pamqp.common import Arguments

from devstack.rabbitmq import Vhost
from devstack.servers import Servers
from devstack.waiting import eventually
from shared.broker import connect_once
from shared.broker_setup import BrokerSetupConfig, BrokerSetupError, set_up
from shared.topology import QUORUM, ConsumerQueues, declare_topology
from tests import publish_probe

# What the earlier version declared users_service's queue with (the machine's `make dev` had it).
EARLIER_ARGUMENTS: Arguments = {
    "x-queue-type": "quorum",
    "x-delivery-limit": 20,
    "x-dead-letter-exchange": "",
    "x-dead-letter-routing-key": "users_service.dlq",
    "x-dead-letter-strategy": "at-least-once",
    "x-overflow": "reject-publish",
}
USERS = ConsumerQueues("users_service", ("orders.order.created",))


def setup_of(servers: Servers, broker: Vhost) -> BrokerSetupConfig:
    rabbitmq = servers.rabbitmq
    return BrokerSetupConfig.from_env(
        {
            "RABBITMQ_MANAGEMENT_URL": rabbitmq.management.base_url,
            "RABBITMQ_ADMIN_USER": rabbitmq.user,
            "RABBITMQ_ADMIN_PASSWORD": rabbitmq.password,
            "RABBITMQ_VHOST": broker.name,
        }
    )


async def declare_as_earlier(broker: Vhost, *, messages: int) -> None:
    async with await connect_once(broker.admin_url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(USERS.main, durable=True, arguments=EARLIER_ARGUMENTS)
        for number in range(messages):
            await channel.default_exchange.publish(aio_pika.Message(b"%d" % number), routing_key=USERS.main)


async def declare_as_the_service_does(broker: Vhost) -> None:
    async with await connect_once(broker.url_for(USERS.service)) as connection:
        await declare_topology(await connection.channel(), own=USERS, receivers=[], retry_delays_ms=(1000,))


async def test_a_queue_the_services_cannot_declare_is_explained_never_deleted(
    servers: Servers, broker: Vhost
) -> None:
    await declare_as_earlier(broker, messages=2)
    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="inequivalent arg"):
        await declare_as_the_service_does(broker)
    with pytest.raises(BrokerSetupError) as failure:
        await set_up(setup_of(servers, broker))
    explained = str(failure.value).splitlines()
    assert explained[1].startswith(f"    {USERS.main}: ")
    assert explained[-1] == f"    rabbitmqctl -p {broker.name} delete_queue {USERS.main}"
    assert len(explained) == 4, "the dead-letter queue, declared as the services do, is not named"
    async with await connect_once(broker.admin_url) as connection:
        queue = await (await connection.channel()).declare_queue(USERS.main, passive=True)
        assert queue.declaration_result.message_count == 2, "a person decides what becomes of them"


async def test_once_deleted_the_service_declares_it_under_the_policy(servers: Servers, broker: Vhost) -> None:
    await declare_as_earlier(broker, messages=0)
    with pytest.raises(BrokerSetupError):
        await set_up(setup_of(servers, broker))
    async with await connect_once(broker.admin_url) as connection:
        await (await connection.channel()).queue_delete(USERS.main)  # what the explanation says
    await set_up(setup_of(servers, broker))
    await declare_as_the_service_does(broker)

    async def declared() -> dict[str, Any] | None:
        # The management API shows a new queue's policy once it has emitted its first statistics.
        listed = await servers.rabbitmq.management.queues(broker.name)
        return next((q for q in listed if q["name"] == USERS.main and "policy" in q), None)

    queue = await eventually(declared, within=30, interval=0.5, what=f"{USERS.main} under its policy")
    assert queue["arguments"] == QUORUM
    assert queue["policy"] == f"eda.{USERS.service}", "what the arguments said, the policy says now"


# --- what each user may publish (the same probe tests/compose/ runs inside the stack) -------------


@pytest.mark.parametrize(
    ("user", "event_type", "user_id", "outcome"),
    [
        ("users_service", "users.user.registered", None, "confirmed"),  # its own: the control
        ("users_service", "orders.order.created", None, "access refused"),  # another's type
        ("orders_service", "users.credit.reserved", None, "access refused"),
        ("users_service", "users.credit.reserved", "orders_service", "precondition failed"),  # a forged id
        ("gateway", "users.credit.reserved", None, "access refused"),  # it publishes nothing
    ],
)
async def test_a_service_publishes_its_own_event_types_under_its_own_name_only(
    broker: Vhost, user: str, event_type: str, user_id: str | None, outcome: str
) -> None:
    await declare_as_the_service_does(broker)  # the exchange, as in a running system
    report = await publish_probe.publish(broker.url_for(user), event_type, user_id or user)
    assert report["outcome"] == outcome, report
