"""The Grafana dashboard against the real services: every metric it reads is exported, with its type
and labels, by the processes the dashboard expects it from.

The gateway and both services run in-process on real Postgres and RabbitMQ; one order goes through
the gateway and the saga approves it; then /metrics of each process is read, as Prometheus reads it.
The names come from tests/observability.py, the one list the static checks of the dashboard
(tests/unit/test_observability.py) use too. Where Debian's Prometheus is installed, the last test
also lets the real Prometheus scrape the three processes with deploy/observability/prometheus.yml
(its targets moved to where the test's processes listen) and runs every dashboard query on it;
then it evaluates the alerting rules (deploy/observability/alerts.yml) on what the services really
export: every rule without an error, none pending after a healthy order, and a real dead letter
raising DeadLettersWaiting.
"""

import asyncio
import contextlib
import dataclasses
import re
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
import yaml
from pytest_aiohttp import AiohttpClient

from devstack.keys import KeyPair
from devstack.ports import free_port
from devstack.rabbitmq import Vhost
from devstack.waiting import eventually
from gateway.app import create_app as create_gateway_app
from gateway.config import GatewayConfig
from orders_service.app import create_app as create_orders_app
from orders_service.config import OrdersConfig
from shared.config import Secret
from shared.topology import EXCHANGE
from tests.conftest import CreateDatabase
from tests.integration.conftest import Client, new_product
from tests.observability import (
    GATEWAY,
    JOBS,
    METRICS,
    ORDERS,
    PROMETHEUS_CONFIG,
    PROMETHEUS_SERIES,
    SERIES,
    USERS,
    Exposition,
    alert_rules,
    dashboard_queries,
    series_used_by_dashboards,
    without_grafana_variables,
)
from tests.support import require_tool
from users_service.app import create_app as create_users_app
from users_service.config import UsersConfig

Processes = dict[str, Client]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
SAGA_DEADLINE = 20.0


@pytest.fixture
async def processes(
    users_config: UsersConfig,
    create_database: CreateDatabase,
    key_pair: KeyPair,
    broker: Vhost,
    aiohttp_client: AiohttpClient,
) -> Processes:
    """The three processes on one vhost, as compose runs them. Not held to the OpenAPI contracts:
    tests/integration/test_contract_coverage.py does that; this test is about /metrics."""
    # The queues counted every second, not every 15: the alerting rules read those counts.
    users = await aiohttp_client(
        create_users_app(dataclasses.replace(users_config, queue_check_interval=1.0))
    )
    orders_config = OrdersConfig(
        database_url=Secret(await create_database("orders")),
        rabbitmq_url=Secret(broker.url_for("orders_service")),
        jwt_public_key_file=str(key_pair.public),
        startup_timeout=5,
        queue_check_interval=1.0,
    )
    orders = await aiohttp_client(create_orders_app(orders_config))
    # Built from the environment the way `python -m gateway` builds it.
    gateway_config = GatewayConfig.from_env(
        {
            "USERS_SERVICE_URL": f"http://{users.host}:{users.port}",
            "ORDERS_SERVICE_URL": f"http://{orders.host}:{orders.port}",
            "JWT_PUBLIC_KEY_FILE": str(key_pair.public),
            "RABBITMQ_URL": broker.url_for("gateway"),
            "DATABASE_URL": await create_database("gateway"),
            "STARTUP_TIMEOUT": "5",
        }
    )
    gateway = await aiohttp_client(create_gateway_app(gateway_config))
    return {GATEWAY: gateway, USERS: users, ORDERS: orders}


async def approved_order(gateway: Client, admin: dict[str, str]) -> str:
    """Register, sign in and place an order through the gateway (of a product `admin` sells for
    it); wait until the saga approves it."""
    email = f"metrics-{uuid.uuid4().hex[:8]}@example.com"
    user = {"email": email, "name": "Grace", "password": "correct-horse"}
    registered = await gateway.post("/api/v2/users", json=user)
    assert registered.status == 201, await registered.text()
    signed_in = await gateway.post("/api/v2/auth/token", json={"email": email, "password": "correct-horse"})
    assert signed_in.status == 200, await signed_in.text()
    auth = {"Authorization": f"Bearer {(await signed_in.json())['access_token']}"}
    items = [{"sku": await new_product(gateway, admin, 1250), "quantity": 2}]
    placed = await gateway.post("/api/v2/orders", json={"items": items}, headers=auth)
    assert placed.status == 202, await placed.text()
    order_id: str = (await placed.json())["id"]

    async def approved() -> bool:
        response = await gateway.get(f"/api/v2/orders/{order_id}", headers=auth)
        status: str = (await response.json())["status"]
        assert status in {"PENDING", "APPROVED"}, f"the saga decided {status}"
        return status == "APPROVED"

    await eventually(approved, within=SAGA_DEADLINE, what=f"order {order_id} approved")
    return order_id


async def scrape(client: Client) -> Exposition:
    response = await client.get("/metrics")
    assert response.status == 200, await response.text()
    # The Prometheus text format (or OpenMetrics, which Prometheus reads as well).
    assert response.content_type in {"text/plain", "application/openmetrics-text"}
    return Exposition.parse(await response.text())


async def scrape_all(processes: Processes) -> dict[str, Exposition]:
    return {job: await scrape(client) for job, client in processes.items()}


def missing_metrics(expositions: dict[str, Exposition]) -> list[str]:
    """Every metric that a process should export and does not, or exports as another type."""
    missing = []
    for name, metric in METRICS.items():
        for job in sorted(metric.exported_by):
            declared = expositions[job].declared_kind(name)
            if declared != metric.kind:
                missing.append(f"{job}: {name} ({metric.kind}) is {declared or 'not exported'}")
    return missing


async def test_every_metric_the_dashboard_reads_is_exported_by_its_processes(
    processes: Processes, admin_headers: dict[str, str]
) -> None:
    await approved_order(processes[GATEWAY], admin_headers)
    expositions = await scrape_all(processes)
    assert not missing_metrics(expositions), "\n".join(missing_metrics(expositions))
    read_by_dashboard = series_used_by_dashboards() - PROMETHEUS_SERIES
    assert read_by_dashboard <= set(SERIES)
    assert {SERIES[series] for series in read_by_dashboard} == set(METRICS)


async def test_samples_carry_the_documented_labels_and_route_templates(
    processes: Processes, admin_headers: dict[str, str]
) -> None:
    order_id = await approved_order(processes[GATEWAY], admin_headers)
    expositions = await scrape_all(processes)
    for job, exposition in expositions.items():
        for name, metric in METRICS.items():
            if job not in metric.exported_by:
                continue
            for sample in exposition.samples_of(name):
                labels = set(sample.labels) - ({"le"} if sample.name.endswith("_bucket") else set())
                assert labels == metric.labels, f"{job}: {sample.name}{sample.labels}"
        routes = {sample.labels["route"] for sample in exposition.samples_of("http_requests_total")}
        assert not {route for route in routes if UUID.search(route)}, f"{job}: a route label holds an id"
    # The order was read through the gateway by its id: counted under the template, not the path.
    order_routes = {
        sample.labels["route"] for sample in expositions[ORDERS].samples_of("http_requests_total")
    }
    assert any(route.startswith("/api/v2/orders/{") for route in order_routes), order_routes
    assert order_id not in str(order_routes)


async def test_after_one_approved_order_the_counters_tell_its_story(
    processes: Processes, admin_headers: dict[str, str]
) -> None:
    await approved_order(processes[GATEWAY], admin_headers)

    async def told() -> bool:
        users, orders = await scrape(processes[USERS]), await scrape(processes[ORDERS])
        return (
            orders.value("events_published_total", type="orders.order.created") >= 1
            and users.value("events_consumed_total", type="orders.order.created") >= 1
            and users.value("events_published_total", type="users.credit.reserved") >= 1
            and orders.value("events_consumed_total", type="users.credit.reserved") >= 1
            and orders.value("saga_duration_seconds_count", outcome="APPROVED") == 1
            and orders.value("outbox_unpublished_events") == 0
            and users.value("outbox_unpublished_events") == 0
            and orders.value("outbox_lag_seconds") == 0
        )

    await eventually(told, within=10, what="the events and the saga counted, the outboxes drained")


# --- with the real Prometheus, where it is installed ---------------------------------------------

PROMETHEUS = shutil.which("prometheus")
SCRAPE_INTERVAL = "1s"


def config_for(targets: dict[str, str], interval: str) -> dict[str, Any]:
    """deploy/observability/prometheus.yml with each job's target moved, scrapes and rule evaluations
    as often as `interval`, and the rule files named where they are; nothing else changed."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / name) for name in config["rule_files"]]
    return config


@contextlib.asynccontextmanager
async def prometheus(config: dict[str, Any], folder: Path) -> AsyncIterator[str]:
    """The real Prometheus, on a free port of this machine; yields its URL."""
    assert PROMETHEUS is not None
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = folder / "prometheus.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address={address}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=output,
        )
    try:
        yield f"http://{address}"
    except BaseException:
        print(log.read_text(errors="replace")[-4000:])  # shown by pytest with the failure
        raise
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


class PrometheusApi:
    """The parts of Prometheus's HTTP API the tests read."""

    def __init__(self, url: str, http: aiohttp.ClientSession) -> None:
        self.url = url
        self.http = http

    async def _get(self, path: str, **params: str) -> Any:
        async with self.http.get(f"{self.url}/api/v1/{path}", params=params) as response:
            answer = await response.json()
            assert answer["status"] == "success", f"{path} {params}: {answer}"
            return answer["data"]

    async def query(self, expression: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self._get("query", query=expression))["result"]
        return result

    async def alerting_rules(self) -> list[dict[str, Any]]:
        return [rule for group in (await self._get("rules"))["groups"] for rule in group["rules"]]

    async def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now."""
        alerts: list[dict[str, Any]] = (await self._get("alerts"))["alerts"]
        return alerts


@pytest.fixture
def prometheus_installed() -> None:
    require_tool(
        PROMETHEUS,
        "Prometheus is not installed (Debian: apt-get install prometheus, or extract its .deb); "
        "the tests above read /metrics as it would",
    )


@pytest.fixture
async def scraped(
    prometheus_installed: None, processes: Processes, admin_headers: dict[str, str], tmp_path: Path
) -> AsyncIterator[PrometheusApi]:
    """The real Prometheus, with deploy/observability's configuration and rules, scraping the three
    processes after one order went through them."""
    await approved_order(processes[GATEWAY], admin_headers)
    targets = {job: f"{client.host}:{client.port}" for job, client in processes.items()}
    async with (
        prometheus(config_for(targets, SCRAPE_INTERVAL), tmp_path) as url,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        api = PrometheusApi(url, http)

        async def every_job_up() -> bool:
            with contextlib.suppress(aiohttp.ClientError):
                up = {sample["metric"]["job"]: sample["value"][1] for sample in await api.query("up")}
                return up == dict.fromkeys(JOBS, "1")
            return False

        await eventually(every_job_up, within=30, interval=0.5, what="Prometheus scrapes every job")
        yield api


async def test_the_real_prometheus_scrapes_every_job_and_runs_every_dashboard_query(
    scraped: PrometheusApi,
) -> None:
    approved = await scraped.query('saga_duration_seconds_count{job="orders_service", outcome="APPROVED"}')
    assert [sample["value"][1] for sample in approved] == ["1"]
    for panel_query in dashboard_queries():
        # A range of several scrapes, as $__rate_interval is in Grafana.
        await scraped.query(without_grafana_variables(panel_query.expression, "10s"))


async def test_the_real_prometheus_evaluates_every_alerting_rule_and_a_dead_letter_raises_its_alert(
    scraped: PrometheusApi, broker: Vhost
) -> None:
    async def every_rule_evaluated() -> list[dict[str, Any]] | None:
        rules = await scraped.alerting_rules()
        return rules if all(rule["health"] != "unknown" for rule in rules) else None

    rules = await eventually(every_rule_evaluated, within=15, interval=0.5, what="every rule evaluated")
    assert {rule["name"] for rule in rules} == set(alert_rules())
    # Each query ran on what the services export, without an error (a join that matches two series
    # on one side, say), and nothing is wrong with a system that has just approved an order.
    assert [(rule["name"], rule["lastError"]) for rule in rules if rule["health"] != "ok"] == []
    assert await scraped.alerts() == []

    # A message no consumer can read: users_service dead-letters it at once.
    async with await aio_pika.connect(broker.admin_url) as connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(EXCHANGE, ensure=True)
        await exchange.publish(aio_pika.Message(b"{not json"), routing_key="orders.order.created")

    async def dead_letter_alert() -> list[dict[str, Any]] | None:
        alerts = [
            alert for alert in await scraped.alerts() if alert["labels"]["alertname"] == "DeadLettersWaiting"
        ]
        return alerts or None

    # Pending: its `for` is a minute, which this test does not wait out (alerts.test.yml does).
    (alert,) = await eventually(dead_letter_alert, within=20, interval=0.5, what="DeadLettersWaiting pending")
    assert alert["labels"] == {
        "alertname": "DeadLettersWaiting",
        "queue": "users_service.dlq",
        "severity": "warning",
    }
    assert alert["state"] == "pending"
    assert "make dlq SERVICE=users_service " in alert["annotations"]["description"]
    assert {alert["labels"]["alertname"] for alert in await scraped.alerts()} == {"DeadLettersWaiting"}
