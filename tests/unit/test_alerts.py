"""The alerting rules (deploy/observability/alerts.yml) and their unit tests (alerts.test.yml),
checked without a Prometheus server.

- promtool accepts the rules, and their unit tests pass: every rule fires there, with its labels and
  annotations, and stays silent where the system is healthy but looks a little like trouble.
- Those tests can fail: with any one rule made to never fire, or to always fire, they do.
- Every rule says how long its condition must last, how bad it is and what to do first, names no
  job, and reads only metrics the services export, by labels they have (tests/observability.py's
  list, which tests/integration/test_dashboard_metrics.py holds the running services to; that test
  also lets the real Prometheus evaluate the rules on what the services export).
- Kubernetes gets exactly the same rules: the PrometheusRule of deploy/k8s/overlays/prod.
- The dashboard's Alerts row shows what every rule watches, at the rule's threshold.
"""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.observability import (
    ALERT_RULES,
    ALERT_TESTS,
    GRAFANA_DASHBOARDS,
    METRICS,
    SERIES,
    TARGET_LABELS,
    alert_rule_groups,
    alert_rules,
    load_dashboard,
    panels,
    parse_query,
)
from tests.support import require_tool
from tests.unit.test_k8s_manifests import build, of_kind

SEVERITIES = frozenset({"warning", "critical"})
RULE_FIELDS = frozenset({"alert", "expr", "for", "keep_firing_for", "labels", "annotations"})
DASHBOARD = GRAFANA_DASHBOARDS / "eda-reference.json"
ALERTS_ROW = "Alerts"
# An operator's first step: a make target, or a log line to look for (in backquotes).
FIRST_STEP = re.compile(r"\bmake [a-z-]+|`[^`]+`")
NAMES_A_JOB = re.compile(r"\bjob\s*(?:=~|!~|!=|=)")

PROMTOOL = shutil.which("promtool")


@pytest.fixture
def promtool() -> str:
    require_tool(
        PROMTOOL,
        "promtool is not installed (Debian: apt-get install prometheus, or extract its .deb); "
        "the other checks here read the same files without it",
    )
    assert PROMTOOL is not None
    return PROMTOOL


def run_promtool(promtool: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *arguments], capture_output=True, text=True, timeout=60, check=False)


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_accepts_the_rules(promtool: str) -> None:
    checked = run_promtool(promtool, "check", "rules", str(ALERT_RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_rules_pass_their_unit_tests(promtool: str) -> None:
    tested = run_promtool(promtool, "test", "rules", str(ALERT_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def alert_tests_with(rule_name: str, expression: str, folder: Path) -> Path:
    """alerts.test.yml beside a copy of alerts.yml in which one rule has another expression."""
    groups = alert_rule_groups()
    for group in groups:
        for rule in group["rules"]:
            if rule["alert"] == rule_name:
                rule["expr"] = expression
    (folder / ALERT_RULES.name).write_text(yaml.safe_dump({"groups": groups}))
    return Path(shutil.copy(ALERT_TESTS, folder / ALERT_TESTS.name))


@pytest.mark.parametrize("name", sorted(alert_rules()))
@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("vector(1) > 2", id="never-fires"),
        pytest.param("vector(1)", id="always-fires"),
    ],
)
def test_the_unit_tests_catch_a_rule_that_is_broken(
    promtool: str, name: str, expression: str, tmp_path: Path
) -> None:
    tested = run_promtool(promtool, "test", "rules", str(alert_tests_with(name, expression, tmp_path)))
    assert tested.returncode != 0, f"the tests pass with {name} as {expression!r}"
    assert f"alertname: {name}," in tested.stdout + tested.stderr, tested.stdout + tested.stderr


# --- what the rules and their tests hold ------------------------------------------------------


def checkpoints() -> list[dict[str, Any]]:
    """Every `alert_rule_test` of alerts.test.yml: an alert's name, a time, and what must fire then."""
    document = yaml.safe_load(ALERT_TESTS.read_text())
    assert document["rule_files"] == [ALERT_RULES.name]
    return [checkpoint for test in document["tests"] for checkpoint in test["alert_rule_test"]]


def test_every_rule_is_tested_firing_and_silent() -> None:
    firing = {checkpoint["alertname"] for checkpoint in checkpoints() if checkpoint["exp_alerts"]}
    silent = {checkpoint["alertname"] for checkpoint in checkpoints() if not checkpoint["exp_alerts"]}
    assert firing == silent == set(alert_rules())
    for checkpoint in checkpoints():
        for expected in checkpoint["exp_alerts"]:
            # promtool compares exactly what it is given: all of them, or the test says little.
            assert set(expected) == {"exp_labels", "exp_annotations"}, checkpoint
            rule = alert_rules()[checkpoint["alertname"]]
            assert expected["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert set(expected["exp_annotations"]) == set(rule["annotations"])


@pytest.mark.parametrize("name", sorted(alert_rules()))
def test_each_rule_says_how_long_how_bad_and_what_to_do_first(name: str) -> None:
    rule = alert_rules()[name]
    assert set(rule) <= RULE_FIELDS, f"{set(rule) - RULE_FIELDS}"
    assert "for" in rule, "how long the condition must hold (0s where at once, with the reason beside it)"
    assert set(rule["labels"]) == {"severity"}
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["annotations"]) == {"summary", "description"}
    assert FIRST_STEP.search(rule["annotations"]["description"]), "a make target or a log line to look at"


@pytest.mark.parametrize("name", sorted(alert_rules()))
def test_each_rule_reads_what_the_services_export_and_names_no_job(name: str) -> None:
    expression = alert_rules()[name]["expr"]
    # Prometheus names the jobs: compose and Kubernetes differently.
    assert not NAMES_A_JOB.search(expression), expression
    parsed = parse_query(expression)
    assert parsed.metrics
    assert parsed.metrics <= set(SERIES), sorted(parsed.metrics - set(SERIES))
    metrics = {METRICS[SERIES[series]] for series in parsed.metrics}
    allowed = set(TARGET_LABELS).union(*(metric.labels for metric in metrics))
    assert parsed.labels <= allowed, (
        f"{sorted(parsed.labels - allowed)} is no label of {sorted(parsed.metrics)}"
    )
    for function, series in parsed.ranged:
        assert METRICS[SERIES[series]].kind == "counter", f"{function}() of the gauge {series}"


# --- Kubernetes -----------------------------------------------------------------------------------


def test_kubernetes_prod_gets_exactly_these_rules_and_dev_none() -> None:
    (rule,) = of_kind(build("prod"), "PrometheusRule")
    assert rule["spec"]["groups"] == alert_rule_groups(), (
        "deploy/k8s/overlays/prod/alerts.yaml must hold the groups of deploy/observability/alerts.yml"
    )
    # dev runs on a laptop's cluster, which has no Prometheus operator to take it.
    assert not of_kind(build("dev"), "PrometheusRule")


# --- the dashboard --------------------------------------------------------------------------------


def alerts_row() -> list[dict[str, Any]]:
    """The panels of the dashboard's Alerts row, in order."""
    found: list[dict[str, Any]] | None = None
    for panel in panels(load_dashboard(DASHBOARD)):
        if panel["type"] == "row":
            if found is not None:
                break
            if panel["title"] == ALERTS_ROW:
                found = list(panel.get("panels", []))  # a collapsed row holds its own
        elif found is not None:
            found.append(panel)
    assert found, f"the dashboard has no row {ALERTS_ROW!r}"
    return found


def one_line(expression: str) -> str:
    return " ".join(expression.split())


def test_the_alerts_row_lists_the_alerts_prometheus_holds() -> None:
    assert any("ALERTS" in parse_query(target["expr"]).metrics for target in alerts_row()[0]["targets"])


@pytest.mark.parametrize("name", sorted(alert_rules()))
def test_the_alerts_row_shows_what_each_rule_watches_at_its_threshold(name: str) -> None:
    condition = one_line(alert_rules()[name]["expr"])
    shown = [panel for panel in alerts_row() if re.search(rf"\b{name}\b", panel.get("description", ""))]
    assert shown, f"no panel of the Alerts row names {name} in its description"
    for panel in shown:
        expressions = [one_line(target["expr"]) for target in panel["targets"]]
        if condition in expressions:
            continue  # the whole condition, drawn while it holds
        # Or what the condition compares, with the red line at the threshold (counts: the next
        # whole number, since Grafana colours from a step's value upwards).
        quantity, _, threshold = condition.rpartition(" > ")
        assert quantity in expressions, f"{panel['title']!r} shows neither {condition!r} nor {quantity!r}"
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        red = [step["value"] for step in steps if step["color"] == "red"]
        assert len(red) == 1, (panel["title"], red)
        assert float(threshold) <= red[0] <= float(threshold) + 1, (panel["title"], red)
