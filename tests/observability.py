"""What the compose profile `observability` expects of the services: the metrics they export, read by
deploy/observability/prometheus.yml and the Grafana dashboard. The one list of metric names that
the static checks (tests/unit/test_observability.py) and the live check against the running services
(tests/integration/test_dashboard_metrics.py) both hold the dashboard and the services to.
"""

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parents[1]
OBSERVABILITY_DIR = ROOT / "deploy" / "observability"
PROMETHEUS_CONFIG = OBSERVABILITY_DIR / "prometheus.yml"
ALERT_RULES = OBSERVABILITY_DIR / "alerts.yml"
ALERT_TESTS = OBSERVABILITY_DIR / "alerts.test.yml"
GRAFANA_DIR = OBSERVABILITY_DIR / "grafana"
GRAFANA_PROVISIONING = GRAFANA_DIR / "provisioning"
GRAFANA_DASHBOARDS = GRAFANA_DIR / "dashboards"

PROFILE = "observability"
OBSERVABILITY_SERVICES = ("jaeger", "prometheus", "grafana")

GATEWAY, USERS, ORDERS = "gateway", "users_service", "orders_service"
# One Prometheus job per process, named like its compose service: the `job` label is what tells the
# processes apart (the services export no `service` label).
JOBS = (GATEWAY, USERS, ORDERS)
SERVICES = frozenset({USERS, ORDERS})

Kind = Literal["counter", "gauge", "histogram"]


@dataclasses.dataclass(frozen=True)
class Metric:
    kind: Kind
    labels: frozenset[str]
    exported_by: frozenset[str]  # jobs

    def series(self, name: str) -> set[str]:
        """The names under which its samples appear, as PromQL selects them."""
        if self.kind == "histogram":
            return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        return {name}


def _metric(kind: Kind, labels: set[str], exported_by: set[str] | frozenset[str]) -> Metric:
    return Metric(kind, frozenset(labels), frozenset(exported_by))


METRICS: dict[str, Metric] = {
    "http_requests_total": _metric("counter", {"method", "route", "status"}, set(JOBS)),
    "http_request_duration_seconds": _metric("histogram", {"method", "route"}, set(JOBS)),
    "events_published_total": _metric("counter", {"type"}, SERVICES),
    "events_consumed_total": _metric("counter", {"type"}, SERVICES),
    "events_duplicates_total": _metric("counter", {"type"}, SERVICES),
    "events_retried_total": _metric("counter", {"type"}, SERVICES),
    "events_dead_lettered_total": _metric("counter", {"type"}, SERVICES),
    "outbox_lag_seconds": _metric("gauge", set(), SERVICES),
    "outbox_unpublished_events": _metric("gauge", set(), SERVICES),
    "outbox_set_aside_events": _metric("gauge", set(), SERVICES),
    "queue_messages": _metric("gauge", {"queue"}, SERVICES),
    "bus_queues_missing": _metric("gauge", set(), SERVICES),
    "orders_pending_past_deadline": _metric("gauge", set(), {ORDERS}),
    "saga_duration_seconds": _metric("histogram", {"outcome"}, {ORDERS}),
}
# Every series name a query may select, and the metric it belongs to.
SERIES: dict[str, str] = {series: name for name, metric in METRICS.items() for series in metric.series(name)}
# Series that Prometheus writes itself, not read from /metrics: `up` for every target, and `ALERTS`
# for every alert pending or firing (deploy/observability/alerts.yml), labelled like the alert.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})
# Labels that Prometheus adds to every series it scrapes.
TARGET_LABELS = frozenset({"job", "instance"})


# --- PromQL, as far as the checks need it ------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)", re.IGNORECASE)
# A name not glued to a number (the `m` of `5m`, the `e` of `1e-9`) or to a Grafana variable.
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
    | {"offset", "inf", "nan"}
)
_RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv)\s*\(\s*([A-Za-z_:][A-Za-z0-9_:]*)")


@dataclasses.dataclass(frozen=True)
class Query:
    """The names a PromQL expression uses: metric names, label names, and the functions it calls."""

    metrics: frozenset[str]
    labels: frozenset[str]
    functions: frozenset[str]
    # (function, metric) for every rate(), increase() and the like over a selector
    ranged: frozenset[tuple[str, str]]


def parse_query(expression: str) -> Query:
    """Split a PromQL expression into the names it uses.

    Not a PromQL parser (promtool is one: tests/unit/test_observability.py runs it where it is
    installed), but exact for what a dashboard query holds: selectors with label matchers and ranges,
    aggregations with by/without, binary operators and function calls.
    """
    text = _STRING.sub('""', expression)
    labels: set[str] = set()
    for matchers in _MATCHERS.findall(text):
        labels.update(_MATCHER_LABEL.findall(matchers))
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    ranged = {(function, metric) for function, metric in _RANGE_FUNCTION.findall(text)}
    for grouping in _GROUPING.findall(text):
        labels.update(label.strip() for label in grouping.split(",") if label.strip())
    text = _GROUPING.sub(" ", text)
    metrics: set[str] = set()
    functions: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        name = match[0]
        if name.lower() in _KEYWORDS:
            continue
        if text[match.end() :].lstrip().startswith("("):
            functions.add(name)
        else:
            metrics.add(name)
    return Query(frozenset(metrics), frozenset(labels), frozenset(functions), frozenset(ranged))


# --- the dashboards ----------------------------------------------------------------------------


def dashboard_files() -> list[Path]:
    return sorted(GRAFANA_DASHBOARDS.glob("*.json"))


def load_dashboard(path: Path) -> dict[str, Any]:
    loaded = json.loads(path.read_text())
    assert isinstance(loaded, dict), f"{path.name} is not a JSON object"
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclasses.dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    expression: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel}: {self.expression}"


def dashboard_queries() -> list[PanelQuery]:
    """The PromQL expression of every panel target of every provisioned dashboard."""
    found = []
    for path in dashboard_files():
        for panel in panels(load_dashboard(path)):
            for target in panel.get("targets", []):
                if "expr" in target:
                    found.append(PanelQuery(path.name, panel.get("title", "?"), target["expr"]))
    return found


def series_used_by_dashboards() -> set[str]:
    return {name for query in dashboard_queries() for name in parse_query(query.expression).metrics}


# Grafana's interval variables, as a fixed range for running the queries outside Grafana.
GRAFANA_INTERVALS = re.compile(
    r"\$(?:__rate_interval|__interval|__range)\b|\$\{(?:__rate_interval|__interval|__range)\}"
)


def without_grafana_variables(expression: str, interval: str = "1m") -> str:
    return GRAFANA_INTERVALS.sub(interval, expression)


# --- the alerting rules ------------------------------------------------------------------------


def alert_rule_groups() -> list[dict[str, Any]]:
    """The rule groups of deploy/observability/alerts.yml, as Prometheus reads them."""
    groups: list[dict[str, Any]] = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    return groups


def alert_rules() -> dict[str, dict[str, Any]]:
    """Every alerting rule, by its alert's name."""
    rules = [rule for group in alert_rule_groups() for rule in group["rules"]]
    by_name = {rule["alert"]: rule for rule in rules}
    assert len(by_name) == len(rules), "two alerts with the same name"
    return by_name


# --- the Prometheus text format ----------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclasses.dataclass
class Exposition:
    """What one scrape of /metrics says: the declared metric types, and the samples."""

    types: dict[str, str]
    samples: list[Sample]

    @classmethod
    def parse(cls, text: str) -> "Exposition":
        types: dict[str, str] = {}
        samples: list[Sample] = []
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(maxsplit=3)
                types[name] = kind.strip()
            elif line and not line.startswith("#"):
                match = _SAMPLE.match(line)
                assert match, f"not a sample in the Prometheus text format: {line!r}"
                labels = dict(_LABEL.findall(match["labels"] or ""))
                samples.append(Sample(match["name"], labels, float(match["value"])))
        return cls(types, samples)

    def declared_kind(self, name: str) -> str | None:
        """The type declared for a metric, whether its family is written with `_total` or without
        (the classic text format and OpenMetrics differ there for counters)."""
        if name in self.types:
            return self.types[name]
        base = name.removesuffix("_total")
        if name.endswith("_total") and self.types.get(base) == "counter":
            return "counter"
        return None

    def samples_of(self, name: str) -> list[Sample]:
        series = METRICS[name].series(name) if name in METRICS else {name}
        return [sample for sample in self.samples if sample.name in series]

    def value(self, series: str, **labels: str) -> float:
        """The sum of the samples of a series whose labels include `labels` (0 when there is none)."""
        return sum(
            sample.value
            for sample in self.samples
            if sample.name == series and all(sample.labels.get(k) == v for k, v in labels.items())
        )
