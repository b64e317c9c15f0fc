"""The Grafana dashboards (observability/grafana/dashboards/*.json), checked without any service.

Structure: schema version, uids, unique panel ids, grid positions that fit and do not overlap,
datasources referenced as {"type", "uid"} with the provisioned uids, a query on every target.
PromQL: every metric a panel (or an alert rule) reads is one pagelens exports (observability/metrics.py),
`up`, or an exporter metric listed here; label matchers and `by` clauses use the metric's labels
(DESIGN.md's table) and values from their fixed sets; rates use `$__rate_interval`; every variable a
query uses is defined, and every defined variable is used. Whether each query also *runs* and
returns data against a real Prometheus is tests/test_prometheus_live.py's job.

The helpers here (loading dashboards, listing their PromQL targets, substituting Grafana variables)
are shared with that test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from app.models import ErrorType
from app.settings import ROOT
from observability import metrics

DASHBOARD_DIR = ROOT / "observability" / "grafana" / "dashboards"
ALERT_RULES = ROOT / "observability" / "alerts" / "pagelens.rules.yml"
PG_QUERIES = ROOT / "observability" / "postgres-exporter" / "queries.yaml"
PROMETHEUS_CONFIG = ROOT / "observability" / "prometheus" / "prometheus.yml"
DASHBOARDS = ("pagelens-queues-storage.json", "pagelens-service.json", "pagelens-unified.json")

DATASOURCES = {"prometheus": "prometheus", "tempo": "tempo", "loki": "loki"}  # uid -> type
MIN_SCHEMA_VERSION = 39
GRID_WIDTH = 24

# DESIGN.md's metric table (names and labels are fixed there), plus what metrics.py adds: two
# telemetry-health counters and the open event streams gauge. Prometheus adds job and instance to
# every series.
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
}
# The fixed value sets of labels (DESIGN.md, app/models.py, worker/pipeline.py), per metric.
LABEL_VALUES: dict[tuple[str, str], frozenset[str]] = {
    ("pagelens_http_requests_total", "status"): frozenset({"1xx", "2xx", "3xx", "4xx", "5xx"}),
    ("pagelens_job_duration_seconds", "outcome"): frozenset({"success", "failure", "retry", "cancelled"}),
    ("pagelens_queue_size", "state"): frozenset({"pending", "deferred", "active", "retry", "dead"}),
    ("pagelens_scan_stage_duration_seconds", "stage"): frozenset({"crawl", "parse", "analyze", "generate"}),
    ("pagelens_scan_end_to_end_seconds", "kind"): frozenset({"url", "document"}),
    ("pagelens_scan_errors_total", "error_type"): frozenset(e.value for e in ErrorType),
    ("pagelens_external_call_duration_seconds", "service"): frozenset({"http_fetch", "psi", "llm", "keybert"}),
    ("pagelens_external_call_duration_seconds", "outcome"): frozenset({"success", "error", "timeout"}),
    ("pagelens_cache_requests_total", "result"): frozenset({"hit", "miss"}),
    ("pagelens_cache_requests_total", "cache"): frozenset({"keyphrases", "psi"}),
    ("pagelens_db_pool_connections", "state"): frozenset({"open", "idle"}),
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


# --- the tests ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    return load_dashboards()


def test_the_three_dashboards_exist(dashboards: dict[str, dict[str, Any]]) -> None:
    assert set(DASHBOARDS) <= dashboards.keys(), sorted(dashboards)
    uids = [d.get("uid") for d in dashboards.values()]
    titles = [d.get("title") for d in dashboards.values()]
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_structure(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    dashboard = dashboards[name]
    uid = dashboard.get("uid")
    assert isinstance(uid, str) and re.fullmatch(r"[a-z0-9-]{1,40}", uid), uid
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    assert isinstance(dashboard.get("title"), str) and dashboard["title"], dashboard.get("title")
    assert isinstance(dashboard.get("schemaVersion"), int) and dashboard["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert "pagelens" in dashboard.get("tags", []), "the dashboards link to each other through the 'pagelens' tag"
    assert {"from", "to"} <= dashboard.get("time", {}).keys()

    panels = list(iter_panels(dashboard))
    assert panels, "no panels"
    assert all(isinstance(p.get("id"), int) for p in panels), [p.get("id") for p in panels]
    ids: list[int] = [p["id"] for p in panels]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"duplicate panel ids {duplicates}"

    boxes = []
    for panel in panels:
        title = panel.get("title")
        assert isinstance(title, str) and title, panel.get("id")
        grid = panel.get("gridPos")
        assert isinstance(grid, dict) and all(isinstance(grid.get(k), int) for k in "hwxy"), (title, grid)
        assert grid["h"] >= 1 and grid["w"] >= 1 and grid["x"] >= 0 and grid["y"] >= 0, (title, grid)
        assert grid["x"] + grid["w"] <= GRID_WIDTH, (title, grid)
        boxes.append((title, grid["x"], grid["y"], grid["x"] + grid["w"], grid["y"] + grid["h"]))
    for i, (title, x0, y0, x1, y1) in enumerate(boxes):
        for other, a0, b0, a1, b1 in boxes[i + 1 :]:
            assert x1 <= a0 or a1 <= x0 or y1 <= b0 or b1 <= y0, f"panels {title!r} and {other!r} overlap"


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


@pytest.mark.parametrize("name", DASHBOARDS)
def test_datasources_are_the_provisioned_ones(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    refs = list(datasource_refs(dashboards[name]))
    assert refs
    for path, ref in refs:
        assert isinstance(ref, dict), f"{path}: datasource must be {{'type', 'uid'}}, not {ref!r}"
        assert ref.get("uid") in DATASOURCES, f"{path}: unknown datasource uid {ref.get('uid')!r}"
        assert ref.get("type") == DATASOURCES[ref["uid"]], f"{path}: uid {ref['uid']} is of type {ref.get('type')}"


@pytest.mark.parametrize("name", DASHBOARDS)
def test_every_panel_has_queries(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    for panel in iter_panels(dashboards[name]):
        if panel["type"] in ("row", "text"):
            continue
        title = panel["title"]
        datasource = panel.get("datasource")
        assert isinstance(datasource, dict), f"{title}: no panel datasource"
        targets = panel.get("targets")
        assert targets, f"{title}: no targets"
        ref_ids = [t.get("refId") for t in targets]
        assert len(set(ref_ids)) == len(ref_ids) and all(ref_ids), (title, ref_ids)
        for target in targets:
            target_ds = target.get("datasource", datasource)
            assert target_ds == datasource, (
                f"{title}/{target['refId']}: the target's datasource differs from the panel's"
            )
            kind = datasource["type"]
            if kind == "prometheus":
                assert isinstance(target.get("expr"), str) and target["expr"].strip(), (title, target)
                assert target.get("legendFormat") is not None, f"{title}: set a legendFormat"
            elif kind == "loki":
                assert isinstance(target.get("expr"), str) and target["expr"].startswith("{"), (title, target)
                assert panel["type"] == "logs", f"{title}: a Loki query belongs in a logs panel"
            elif kind == "tempo":
                assert target.get("queryType") in ("traceql", "traceqlSearch"), (title, target)
                assert isinstance(target.get("query"), str) and target["query"], (title, target)
                assert panel["type"] in ("table", "traces"), (
                    f"{title}: a Tempo query belongs in a table or traces panel"
                )


@pytest.mark.parametrize("name", DASHBOARDS)
def test_variables_are_defined_and_used(dashboards: dict[str, dict[str, Any]], name: str) -> None:
    dashboard = dashboards[name]
    defined = variables(dashboard)
    text = json.dumps(dashboard.get("panels", []))
    used = used_variables(text)
    builtins = {n for n in used if n.startswith("__")}
    assert not (used - builtins) - defined.keys(), f"undefined variables {sorted((used - builtins) - defined.keys())}"
    assert not builtins - set(BUILTIN_VALUES) - {"__url_time_range", "__value", "__all"}, sorted(builtins)
    assert not defined.keys() - used, f"variables no panel uses: {sorted(defined.keys() - used)}"
    for variable_name, variable in defined.items():
        if variable.get("type") == "query":
            assert variable.get("datasource", {}).get("uid") == "prometheus", variable_name
            assert variable.get("refresh") in (1, 2), f"{variable_name}: refresh on load or on time range change"


def test_queue_and_route_variables(dashboards: dict[str, dict[str, Any]]) -> None:
    by_uid = {d["uid"]: d for d in dashboards.values()}
    assert "queue" in variables(by_uid["pagelens-queues-storage"])
    assert "queue" in variables(by_uid["pagelens-unified"])
    assert "route" in variables(by_uid["pagelens-service"])
    known = known_labels()
    for uid, name, query in variable_queries(dashboards):
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query)
        assert match, f"{uid} ${name}: expected label_values(metric, label), got {query!r}"
        metric, label = match.groups()
        assert metric in known and label in known[metric], f"{uid} ${name}: {metric} has no label {label}"
        assert label == name, f"{uid} ${name} lists {label} values"


def test_promql_reads_real_metrics_and_labels(dashboards: dict[str, dict[str, Any]]) -> None:
    known, histograms = known_labels(), histogram_names()
    problems = []
    for target in prometheus_targets(dashboards):
        expr = substitute(target.expr, {"queue": "pagelens:queue", "route": "/api/v1/scan-jobs", "trace_id": ""})
        problems += [f"{target}\n    {p}" for p in check_expr(expr, known, histograms)]
    assert not problems, "\n".join(problems)


def test_metrics_and_labels_match_the_registry() -> None:
    """PAGELENS_LABELS above is observability/metrics.py's set: a new metric needs its labels here."""
    assert set(PAGELENS_LABELS) == set(metrics.REGISTRY.collectors), set(PAGELENS_LABELS) ^ set(
        metrics.REGISTRY.collectors
    )


def test_every_pagelens_metric_has_a_panel(dashboards: dict[str, dict[str, Any]]) -> None:
    histograms = histogram_names()
    read = set()
    for target in prometheus_targets(dashboards):
        expr = substitute(target.expr, {"queue": "q", "route": "r", "trace_id": ""})
        read |= {base_metric(s.metric or "", histograms) for s in parse(expr).selectors}
    missing = set(metrics.REGISTRY.collectors) - read
    assert not missing, f"metrics no panel shows: {sorted(missing)}"


def test_rates_use_the_rate_interval(dashboards: dict[str, dict[str, Any]]) -> None:
    """Every range is $__rate_interval; $__range only in instant "over the time range" stats."""
    problems = []
    for target in prometheus_targets(dashboards):
        for selector_range in re.findall(r"\[([^\]]+)\]", target.expr):
            allowed = RATE_RANGES | (WHOLE_RANGE if target.instant else set())
            if selector_range not in allowed:
                problems.append(f"{target}\n    [{selector_range}] should be [$__rate_interval]")
    assert not problems, "\n".join(problems)


def test_histogram_quantiles_keep_le(dashboards: dict[str, dict[str, Any]]) -> None:
    problems = []
    for target in prometheus_targets(dashboards):
        if "histogram_quantile" not in target.expr:
            continue
        for labels, metric in re.findall(r"by \(([^)]*)\) \(rate\((\w+)", target.expr):
            if metric.endswith("_bucket") and "le" not in [x.strip() for x in labels.split(",")]:
                problems.append(f"{target}\n    aggregating {metric} without le")
        if "_bucket" not in target.expr:
            problems.append(f"{target}\n    histogram_quantile over something that is not a _bucket series")
    assert not problems, "\n".join(problems)


def test_data_links_point_at_real_dashboards(dashboards: dict[str, dict[str, Any]]) -> None:
    by_uid = {d["uid"]: d for d in dashboards.values()}
    links = re.findall(r'"url": "(/d/[^"]+)"', json.dumps(list(dashboards.values())))
    assert links, "the unified dashboard links a trace id to its trace and logs"
    for url in links:
        uid = url.split("/")[2]
        assert uid in by_uid, url
        for var in re.findall(r"var-(\w+)=", url):
            assert var in variables(by_uid[uid]), f"{url}: {uid} has no variable {var}"


def test_unified_dashboard_has_traces_metrics_and_logs(dashboards: dict[str, dict[str, Any]]) -> None:
    unified = next(d for d in dashboards.values() if d["uid"] == "pagelens-unified")
    kinds = {p["datasource"]["type"] for p in iter_panels(unified) if p["type"] != "row"}
    assert kinds == {"prometheus", "tempo", "loki"}, kinds
    tempo_queries = [t["query"] for p in iter_panels(unified) for t in p.get("targets", []) if "query" in t]
    assert any("pagelens-api" in q and "pagelens-worker" in q for q in tempo_queries), tempo_queries
    loki = [t["expr"] for p in iter_panels(unified) for t in p.get("targets", []) if p["type"] == "logs"]
    assert any("trace_id" in q for q in loki), "a logs panel follows the selected trace id"


def test_postgres_exporter_queries_file() -> None:
    defined = pg_query_metrics()
    assert "pg_table_total_bytes" in defined, sorted(defined)
    assert {"datname", "schemaname", "relname"} <= defined["pg_table_total_bytes"]


def test_alert_rules_read_real_metrics() -> None:
    rules = alert_rules()
    if not rules:
        pytest.skip(f"{ALERT_RULES.relative_to(ROOT)} does not exist yet")
    known, histograms = known_labels(), histogram_names()
    problems = []
    for rule in rules:
        name = rule.get("alert") or rule.get("record")
        assert isinstance(rule.get("expr"), str) and rule["expr"].strip(), rule
        problems += [f"{name}: {p}" for p in check_expr(str(rule["expr"]), known, histograms)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("expr", "metrics_read"),
    [
        (
            "histogram_quantile(0.95, sum by (le, route) "
            '(rate(pagelens_http_request_duration_seconds_bucket{route=~"x"}[1m])))',
            ["pagelens_http_request_duration_seconds_bucket"],
        ),
        ('count(up{job="pagelens-worker"} == 1) or vector(0)', ["up"]),
        ("sum(max by (queue) (pagelens_queue_size{state='dead'})) > bool 0", ["pagelens_queue_size"]),
        ("topk(10, max by (datname) (pg_table_total_bytes)) offset 5m", ["pg_table_total_bytes"]),
        ('{__name__="pagelens_active_scans"} and on (job) up', ["pagelens_active_scans", "up"]),
        ("rate(pagelens_jobs_enqueued_total[5m:1m])", ["pagelens_jobs_enqueued_total"]),
    ],
)
def test_the_promql_scanner(expr: str, metrics_read: list[str]) -> None:
    assert [s.metric for s in parse(expr).selectors] == metrics_read


def test_the_checker_finds_mistakes() -> None:
    known, histograms = known_labels(), histogram_names()
    assert check_expr('sum(rate(pagelens_job_duration_seconds_count{outcome="failed"}[1m]))', known, histograms)
    assert check_expr("sum(pagelens_queue_size{status='dead'})", known, histograms)
    assert check_expr("sum by (route) (pagelens_queue_size)", known, histograms)
    assert check_expr("pagelens_scans_total", known, histograms)
    assert check_expr('up{job="pagelens"} == 0', known, histograms)  # not a job prometheus.yml scrapes
    assert not check_expr('sum by (queue) (pagelens_queue_size{state=~"retry|dead"})', known, histograms)
    assert substitute("x[$__rate_interval] ${queue:regex} [[route]]", {"queue": "q", "route": "r"}) == "x[1m] q r"
    assert regex_escape("/a/{id}/b") == r"/a/\\{id\\}/b"
