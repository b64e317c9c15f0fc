"""The Grafana dashboards (observability/grafana/dashboards/*.json), checked without any service.

Structure: schema version, uids, unique panel ids, grid positions that fit and do not overlap,
datasources referenced as {"type", "uid"} with the provisioned uids, a query on every target.
PromQL: every metric a panel (or an alert rule) reads is one pagelens exports (observability/metrics.py),
`up`, or an exporter metric listed here; label matchers and `by` clauses use the metric's labels
(as tests/promql.py lists them) and values from their fixed sets; rates use `$__rate_interval`; every
variable a query uses is defined, and every defined variable is used. Whether each query also *runs* and
returns data against a real Prometheus is tests/test_prometheus_live.py's job.

The helpers (loading dashboards, listing their PromQL targets, substituting Grafana variables, the
PromQL scanner) are in tests/promql.py, shared with that test and tests/test_stack.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from app.core.settings import ROOT
from observability import metrics
from tests.promql import (
    ALERT_RULES,
    BUILTIN_VALUES,
    DATASOURCES,
    PAGELENS_LABELS,
    RATE_RANGES,
    WHOLE_RANGE,
    alert_rules,
    base_metric,
    check_expr,
    datasource_refs,
    histogram_names,
    iter_panels,
    known_labels,
    load_dashboards,
    parse,
    pg_query_metrics,
    prometheus_targets,
    regex_escape,
    substitute,
    used_variables,
    variable_queries,
    variables,
)

DASHBOARDS = ("pagelens-queues-storage.json", "pagelens-service.json", "pagelens-unified.json")
MIN_SCHEMA_VERSION = 39
GRID_WIDTH = 24

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
