"""The clusters the failure tests run on (devstack/cluster.py): one three-node RabbitMQ cluster for the
session, and a Postgres primary and standby of each test's own (a failover uses its standby up).

These tests run apart from `make test` (`make test-cluster`): they start servers from this machine's
binaries whatever DEVSTACK_SERVERS says, and need HAProxy, and root for iptables (the partition).
"""

import os
import shutil
from collections.abc import AsyncIterator

import pytest

from devstack.cluster import (
    RabbitMQCluster,
    cluster_binaries,
    started_rabbitmq_cluster,
)
from devstack.servers import NoServers
from tests.support import require_tool


@pytest.fixture(scope="session")
async def rabbitmq_cluster() -> AsyncIterator[RabbitMQCluster]:
    require_tool(shutil.which("haproxy", path=f"/usr/sbin:{os.environ.get('PATH', '')}"), "needs HAProxy")
    try:
        _, rabbitmq_bin_dir = cluster_binaries()
    except NoServers as reason:
        pytest.fail(str(reason), pytrace=False)
    async with started_rabbitmq_cluster(rabbitmq_bin_dir) as cluster:
        yield cluster


@pytest.fixture
async def healthy_rabbitmq_cluster(rabbitmq_cluster: RabbitMQCluster) -> AsyncIterator[RabbitMQCluster]:
    """The cluster with every node running, joined and unpartitioned, before and after the test."""
    await rabbitmq_cluster.start()
    yield rabbitmq_cluster
    await rabbitmq_cluster.heal()
    await rabbitmq_cluster.start()


@pytest.fixture
def firewall() -> None:
    """The tests that cut links (a partition, a lagging standby) do it with iptables, as root."""
    iptables = shutil.which("iptables", path=f"/usr/sbin:/sbin:{os.environ.get('PATH', '')}")
    require_tool(iptables if os.geteuid() == 0 else None, "needs root and iptables (a cut link is a rule)")
