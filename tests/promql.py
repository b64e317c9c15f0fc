"""The observability configuration as the tests read it, and a small PromQL scanner and checker.

The Grafana dashboards (observability/grafana/dashboards/*.json) and their PromQL targets and
variables, Grafana's variable substitution, the alert rules, the Prometheus scrape jobs, the
postgres-exporter custom queries, the KEDA trigger queries (deploy/autoscaling/), and the labels
each metric a query may read has. Shared by tests/test_dashboards.py (checked without any service),
tests/test_stack.py and tests/test_prometheus_live.py (run against a real Prometheus).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped]

from app.core import audit
from app.core.models import ErrorType
from app.core.settings import ROOT
from observability import metrics

DASHBOARD_DIR = ROOT / "observability" / "grafana" / "dashboards"
ALERT_RULES = ROOT / "observability" / "alerts" / "pagelens.rules.yml"
PG_QUERIES = ROOT / "observability" / "postgres-exporter" / "queries.yaml"
PROMETHEUS_CONFIG = ROOT / "observability" / "prometheus" / "prometheus.yml"

DATASOURCES = {"prometheus": "prometheus", "tempo": "tempo", "loki": "loki"}  # uid -> type

# The metrics the README lists (names and labels are fixed), plus what metrics.py adds: two
# telemetry-health counters, the open event streams gauge and the audit trail's counter. Prometheus
# adds job and instance to every series.
PAGELENS_LABELS: dict[str, frozenset[str]] = {
    "pagelens_http_requests_total": frozenset({"method", "route", "status"}),
    "pagelens_http_request_duration_seconds": frozenset({"method", "route"}),
    "pagelens_http_requests_in_progress": frozenset({"method", "route"}),
    "pagelens_jobs_enqueued_total": frozenset({"queue", "function"}),
    "pagelens_job_queue_wait_seconds": frozenset({"queue", "function"}),
    "pagelens_job_duration_seconds": frozenset({"queue", "function", "outcome"}),
    "pagelens_queue_size": frozenset({"queue", "state"}),
    "pagelens_queue_oldest_pending_age_seconds": frozenset({"queue"}),
    "pagelens_scan_stage_duration_seconds": frozenset({"stage"}),
    "pagelens_scan_end_to_end_seconds": frozenset({"kind"}),
    "pagelens_scan_errors_total": frozenset({"error_type"}),
    "pagelens_external_call_duration_seconds": frozenset({"service", "outcome"}),
    "pagelens_cache_requests_total": frozenset({"cache", "result"}),
    "pagelens_active_scans": frozenset(),
    "pagelens_db_pool_connections": frozenset({"state"}),
    "pagelens_db_query_duration_seconds": frozenset({"query"}),
    "pagelens_build_info": frozenset({"version"}),
    "pagelens_job_trace_context_total": frozenset({"result"}),
    "pagelens_job_hook_errors_total": frozenset({"hook"}),
    "pagelens_sse_streams_open": frozenset(),
    "pagelens_audit_events_total": frozenset({"action", "outcome"}),
}
# The fixed value sets of labels (README, app/core/models.py, worker/pipeline.py), per metric.
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("pagelens_http_requests_total", "status"): frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"}),
    ("pagelens_job_duration_seconds", "outcome"): frozenset({"success", "failure", "retry", "cancelled"}),
    ("pagelens_queue_size", "state"): frozenset({"pending", "deferred", "active", "retry", "dead"}),
    ("pagelens_scan_stage_duration_seconds", "stage"): frozenset({"crawl", "parse", "analyze", "generate"}),
    ("pagelens_scan_end_to_end_seconds", "kind"): frozenset({"url", "document"}),
    ("pagelens_scan_errors_total", "error_type"): frozenset(e.value for e in ErrorType),
    ("pagelens_external_call_duration_seconds", "service"): frozenset(
        {"http_fetch", "psi", "llm", "keybert", "robots", "llms_txt"}
    ),
    ("pagelens_external_call_duration_seconds", "outcome"): frozenset({"success", "error", "timeout"}),
    ("pagelens_cache_requests_total", "result"): frozenset({"hit", "miss"}),
    ("pagelens_cache_requests_total", "cache"): frozenset({"keyphrases", "psi", "robots"}),
    ("pagelens_db_pool_connections", "state"): frozenset({"open", "idle"}),
    ("pagelens_audit_events_total", "action"): frozenset(a.value for a in audit.Action),
    ("pagelens_audit_events_total", "outcome"): frozenset(o.value for o in audit.Outcome),
}
# Metrics of prometheus-postgres-exporter (default collectors) and prometheus-redis-exporter that
# the dashboards read, with their labels; the live test proves each one is really exported. The
# per-table metrics come from the exporter's custom queries file (PG_QUERIES), read below.
EXPORTER_LABELS: dict[str, frozenset[str]] = {
    "pg_up": frozenset(),
    "pg_database_size_bytes": frozenset({"datname", "server"}),
    "pg_stat_activity_count": frozenset({"datname", "state", "server", "usename", "application_name"}),
    "redis_up": frozenset(),
    "redis_memory_used_bytes": frozenset(),
    "redis_memory_used_rss_bytes": frozenset(),
    "redis_memory_max_bytes": frozenset(),
    "redis_connected_clients": frozenset(),
    "redis_db_keys": frozenset({"db"}),
}
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

# Grafana's built-in variables, and a value for each that keeps an expression valid PromQL.
BUILTIN_VALUES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
RATE_RANGES = {"$__rate_interval", "${__rate_interval}"}
# Ranges an instant "over the whole time range" stat may use with increase().
WHOLE_RANGE = {"$__range", "${__range}"}

# --- loading ---------------------------------------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard file by file name."""
    return {path.name: json.loads(path.read_text()) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, with the panels of collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


@dataclass(frozen=True)
class PromTarget:
    dashboard: str  # uid
    panel: str  # title
    ref_id: str
    expr: str
    instant: bool

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.dashboard, self.panel, self.ref_id)

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}: {self.expr}"


def prometheus_targets(dashboards: dict[str, dict[str, Any]] | None = None) -> list[PromTarget]:
    """Every Prometheus query of every panel, and the queries of the dashboards' variables."""
    found = []
    for dashboard in (dashboards or load_dashboards()).values():
        for panel in iter_panels(dashboard):
            for target in panel.get("targets", []):
                datasource = target.get("datasource") or panel.get("datasource") or {}
                if datasource.get("uid") == "prometheus":
                    instant = bool(target.get("instant")) and not target.get("range")
                    found.append(PromTarget(dashboard["uid"], panel["title"], target["refId"], target["expr"], instant))
    return found


def variable_queries(dashboards: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """(dashboard uid, variable name, label_values(...) query) of every Prometheus query variable."""
    found = []
    for dashboard in (dashboards or load_dashboards()).values():
        for name, variable in variables(dashboard).items():
            if variable.get("type") == "query" and (variable.get("datasource") or {}).get("uid") == "prometheus":
                query = variable.get("query")
                text = query.get("query") if isinstance(query, dict) else query
                found.append((dashboard["uid"], name, str(text)))
    return found


VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)\]\]")


def _variable_name(match: re.Match[str]) -> str:
    name: str = next(g for g in (match.group(1), match.group(3), match.group(4)) if g)
    return name


def used_variables(text: str) -> set[str]:
    return {_variable_name(m) for m in VARIABLE.finditer(text)}


def substitute(expr: str, values: dict[str, str]) -> str:
    """Replace Grafana variables ($x, ${x}, ${x:fmt}, [[x]]) the way the Prometheus datasource would."""

    def replace(match: re.Match[str]) -> str:
        name = _variable_name(match)
        if name in values:
            return values[name]
        if name in BUILTIN_VALUES:
            return BUILTIN_VALUES[name]
        raise KeyError(f"no value for ${name} in {expr}")

    return VARIABLE.sub(replace, expr)


def regex_escape(value: str) -> str:
    """How Grafana's Prometheus datasource escapes a multi-value variable's value inside =~"..."."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def pg_query_metrics() -> dict[str, frozenset[str]]:
    """Metrics defined by the postgres-exporter custom queries file: <namespace>_<column> and their labels."""
    found: dict[str, frozenset[str]] = {}
    queries: dict[str, Any] = yaml.safe_load(PG_QUERIES.read_text())
    for namespace, spec in queries.items():
        columns = [next(iter(m.items())) for m in spec["metrics"]]
        labels = frozenset(name for name, col in columns if col["usage"] == "LABEL") | {"server"}
        for name, col in columns:
            if col["usage"] != "LABEL":
                found[f"{namespace}_{name}"] = labels
    return found


def scrape_jobs() -> frozenset[str]:
    """The job names of the deployment's Prometheus config: the only values `up{job}` can have."""
    config: dict[str, Any] = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    return frozenset(job["job_name"] for job in config["scrape_configs"])


LABEL_VALUES[("up", "job")] = scrape_jobs()


def alert_rules() -> list[dict[str, Any]]:
    """The rules of observability/alerts/pagelens.rules.yml (alerting and recording), [] when absent."""
    if not ALERT_RULES.exists():
        return []
    document = yaml.safe_load(ALERT_RULES.read_text()) or {}
    return [rule for group in document.get("groups", []) for rule in group.get("rules", [])]


def datasource_refs(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                yield path, value
            else:
                yield from datasource_refs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from datasource_refs(item, f"{path}[{i}]")


# --- a small PromQL scanner -----------------------------------------------------------------------

TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<number>(?:0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(?:(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*)?)
    | (?P<ident>[A-Za-z_][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>(){}\[\],:@])
    """,
    re.VERBOSE,
)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
AGGREGATIONS = {
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"}


@dataclass(frozen=True)
class Selector:
    metric: str | None
    matchers: tuple[tuple[str, str, str], ...]  # (label, operator, value)


@dataclass(frozen=True)
class Parsed:
    selectors: tuple[Selector, ...]
    grouping: frozenset[str]  # labels in by/without/on/ignoring/group_* clauses
    ranges: tuple[str, ...]  # the text inside every [...]


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while position < len(expr):
        match = TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"cannot scan PromQL at {expr[position : position + 20]!r} in {expr}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, match.group()))
        position = match.end()
    return tokens


def _unquote(text: str) -> str:
    body = text[1:-1]
    return body if text.startswith("`") else re.sub(r"\\(.)", r"\1", body)


def parse(expr: str) -> Parsed:
    """Selectors, grouping labels and range texts of a PromQL expression (variables already substituted)."""
    tokens = tokenize(expr)
    selectors: list[Selector] = []
    grouping: set[str] = set()
    ranges: list[str] = []

    def matchers_from(i: int) -> tuple[tuple[tuple[str, str, str], ...], int]:
        found = []
        while tokens[i][1] != "}":
            if tokens[i][1] == ",":
                i += 1
                continue
            label, op, value = tokens[i], tokens[i + 1], tokens[i + 2]
            assert label[0] in ("ident", "string") and op[1] in ("=", "!=", "=~", "!~") and value[0] == "string", (
                f"bad label matcher near {label[1]!r} in {expr}"
            )
            found.append((_unquote(label[1]) if label[0] == "string" else label[1], op[1], _unquote(value[1])))
            i += 3
        return tuple(found), i + 1

    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else None
        if kind == "ident" and text in GROUPING:
            if following == "(":
                i += 2
                while tokens[i][1] != ")":
                    if tokens[i][0] == "ident":
                        grouping.add(tokens[i][1])
                    i += 1
            i += 1
        elif kind == "ident" and (following == "(" or text in AGGREGATIONS or text in KEYWORDS):
            i += 1  # a function or aggregation (its arguments follow), or an operator keyword
        elif kind == "ident":
            matchers: tuple[tuple[str, str, str], ...] = ()
            i += 1
            if following == "{":
                matchers, i = matchers_from(i + 1)
            selectors.append(Selector(text, matchers))
        elif text == "{":
            matchers, i = matchers_from(i + 1)
            name = next((value for label, op, value in matchers if label == "__name__" and op == "="), None)
            selectors.append(Selector(name, matchers))
        elif text == "[":
            end = next(j for j in range(i, len(tokens)) if tokens[j][1] == "]")
            ranges.append("".join(t for _, t in tokens[i + 1 : end]))
            i = end + 1
        else:
            i += 1
    return Parsed(tuple(selectors), frozenset(grouping), tuple(ranges))


def base_metric(name: str, histograms: set[str]) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def histogram_names() -> set[str]:
    return {name for name, c in metrics.REGISTRY.collectors.items() if type(c).__name__ == "Histogram"}


def known_labels() -> dict[str, frozenset[str]]:
    """Every metric a query may read, with the labels it has (job/instance added by Prometheus)."""
    known = {**PAGELENS_LABELS, **EXPORTER_LABELS, **pg_query_metrics(), "up": frozenset()}
    for rule in alert_rules():
        if "record" in rule:
            known[rule["record"]] = frozenset()  # unknown: checked live, not here
    return {name: labels | TARGET_LABELS for name, labels in known.items()}


def check_expr(expr: str, known: dict[str, frozenset[str]], histograms: set[str]) -> list[str]:
    """What is wrong with one PromQL expression (variables substituted): unknown metrics, labels, values."""
    problems = []
    parsed = parse(expr)
    recorded = {rule["record"] for rule in alert_rules() if "record" in rule}
    labels_in_expr: set[str] = set()
    for selector in parsed.selectors:
        if selector.metric is None:
            problems.append(f"a selector without a metric name: {expr}")
            continue
        base = base_metric(selector.metric, histograms)
        if base not in known:
            problems.append(f"unknown metric {selector.metric!r} (not in observability/metrics.py, not an exporter's)")
            continue
        if base in recorded:
            continue
        allowed = known[base] | ({"le"} if selector.metric.endswith("_bucket") else set())
        labels_in_expr |= allowed
        for label, op, value in selector.matchers:
            if label not in allowed:
                problems.append(f"{selector.metric} has no label {label!r} (labels: {sorted(allowed)})")
                continue
            values = LABEL_VALUES.get((base, label))
            if values is None or op not in ("=", "=~"):
                continue
            alternatives = value.split("|") if op == "=~" else [value]
            if all(re.fullmatch(r"[\w-]+", a) for a in alternatives):
                unknown = [a for a in alternatives if a not in values]
                if unknown:
                    problems.append(f"{selector.metric}{{{label}}} never has the value(s) {unknown}: {sorted(values)}")
    if labels_in_expr and not any(base_metric(s.metric or "", histograms) in recorded for s in parsed.selectors):
        unknown_grouping = parsed.grouping - labels_in_expr - {"le"}
        if unknown_grouping:
            problems.append(f"grouping by labels no metric of the expression has: {sorted(unknown_grouping)}")
    return problems


SCALED_OBJECT = ROOT / "deploy" / "autoscaling" / "scaledobject.yaml"


def keda_triggers() -> dict[str, str]:
    """The Prometheus queries the KEDA ScaledObject scales the workers on, by trigger name."""
    scaled = yaml.safe_load(SCALED_OBJECT.read_text())
    return {t["name"]: " ".join(t["metadata"]["query"].split()) for t in scaled["spec"]["triggers"]}
