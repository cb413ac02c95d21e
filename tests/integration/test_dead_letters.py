"""The dead letters on this machine's RabbitMQ, in a vhost of the test's own: listing them any number
of times loses none, and a message that kills its consumer every time ends among them after the
configured number of redeliveries. tests/compose/ runs the same probes (tests/dead_letter_probes.py)
against RabbitMQ 4, whose quorum queues have a delivery limit of their own and count every return.
"""

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from devstack.servers import Servers
from tests.dead_letter_probes import (
    assert_dead_lettered_after_the_limit,
    assert_every_listing_showed_every_letter,
)

PROBES = Path(__file__).resolve().parents[1] / "dead_letter_probes.py"
# Small, to keep the test short: the probe kills this many consumers and one more.
DELIVERY_LIMIT = 3


async def probe(servers: Servers, rabbitmq_url: str, *arguments: str) -> dict[str, Any]:
    """Run a probe in a process of its own (it forks its consumers), on the test's vhost."""
    broker = servers.rabbitmq
    settings = {
        "RABBITMQ_URL": rabbitmq_url,
        "RABBITMQ_MANAGEMENT_URL": broker.management.base_url,
        "RABBITMQ_ADMIN_USER": broker.user,
        "RABBITMQ_ADMIN_PASSWORD": broker.password,
        "DELIVERY_LIMIT": str(DELIVERY_LIMIT),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBES),
        *arguments,
        env={**os.environ, **settings},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, errors.decode()
    report: dict[str, Any] = json.loads(output.decode().splitlines()[-1])
    return report


async def test_listing_the_dead_letters_25_times_loses_none(servers: Servers, rabbitmq_url: str) -> None:
    assert_every_listing_showed_every_letter(
        await probe(servers, rabbitmq_url, "list", "users_service", "--listings", "25")
    )


async def test_a_message_that_kills_its_consumer_every_time_is_dead_lettered_after_the_limit(
    servers: Servers, rabbitmq_url: str
) -> None:
    assert_dead_lettered_after_the_limit(await probe(servers, rabbitmq_url, "crash-loop", "orders_service"))
