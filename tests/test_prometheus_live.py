"""The money test: every dashboard panel and every alert rule, run against a real Prometheus.

A real Prometheus (the Debian `prometheus` binary) scrapes, every second, the real API (uvicorn)
and the real worker (`arq worker.WorkerSettings`) started as subprocesses, plus
prometheus-postgres-exporter and prometheus-redis-exporter when installed, under the job names
the deployment uses (pagelens-api, pagelens-worker, postgres-exporter, redis-exporter), and loads
observability/alerts/pagelens.rules.yml when it exists. The worker talks to small fake PageSpeed
Insights and LLM servers (tests/fakes.py), so the PSI and LLM panels have data too.

The test then causes what the dashboards describe: successful URL and document scans (keyphrase
cache misses and hits), a page answering 404 (FAILED http_error), pages answering 503 and timing
out with PAGELENS_MAX_TRIES=2 (a retry, then a dead scan), API requests answered 4xx. Then EVERY
PromQL expression of every panel of every dashboard goes through Prometheus's /api/v1/query with
the Grafana variables substituted: each must parse, and each must return data unless it is in
the short allow-list below with its reason. Every alert rule expression must parse and evaluate
without error; which ones return data is reported.

Prometheus missing: skipped, unless CI=true, where missing binaries fail the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import psutil  # type: ignore[import-untyped]
import pytest

from app.cli.embedded import free_port
from tests import binaries
from tests.fakes import serve_fake_llm, serve_fake_psi
from tests.live import follow
from tests.processes import (
    Proc,
    child_processes,
    process_env,
    start_process,
    stop_process,
    wait_api_ready,
    wait_children_gone,
    wait_for_200,
    wait_worker_ready,
)
from tests.promql import (
    ALERT_RULES,
    EXPORTER_LABELS,
    PG_QUERIES,
    PromTarget,
    alert_rules,
    keda_triggers,
    pg_query_metrics,
    prometheus_targets,
    regex_escape,
    substitute,
    variable_queries,
)
from tests.site import Site

pytestmark = pytest.mark.slow

SCANS = "/api/v1/scan-jobs"
STATUS_ROUTE = "/api/v1/scan-jobs/{scanId}/status"
EXPORTER_JOBS = ("postgres-exporter", "redis-exporter")
PAGELENS_JOBS = ("pagelens-api", "pagelens-worker")
POLL = 0.5
PROMETHEUS_START_POLLS = 120  # x POLL: ~60 s
SCRAPED_POLLS = 120  # x POLL: ~60 s for the last scan's metrics to be scraped
DATA_WAIT = 30.0  # seconds a query may take to show data that the scans caused
QUERY_TIMEOUT = 10.0
SHOWN_SERIES = 6  # per query, in the report

# Grafana's variables, as the dashboards would send them while looking at this test's activity.
VARIABLE_VALUES = {"route": regex_escape(STATUS_ROUTE), "trace_id": "", "__rate_interval": "1m", "__range": "10m"}

# Panels (dashboard uid, panel title, refId) that cannot have data here, and why.
NO_DATA_EXPECTED: dict[tuple[str, str, str], str] = {
    ("pagelens-queues-storage", "Redis memory", "C"): (
        "maxmemory line (redis_memory_max_bytes > 0): the test's Redis is a shared server without maxmemory, "
        "and the test must not reconfigure it; compose's Redis sets maxmemory"
    ),
}


@dataclass
class Live:
    prometheus_url: str
    queue: str
    exporters: tuple[str, ...]  # the exporter jobs that run
    processes: dict[str, Proc]
    scans: dict[str, str] = field(default_factory=dict)  # what each scan ended as, by scan id
    report: list[str] = field(default_factory=list)


def _libpq_dsn(dsn: str) -> str:
    """The asyncpg-style DSN for lib/pq (postgres-exporter): sslmode must be explicit there."""
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query.setdefault("sslmode", "disable")
    return urlunsplit(parts._replace(query=urlencode(query)))


def _prometheus_config(targets: dict[str, str], rule_files: list[str]) -> str:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [address]}]} for job, address in targets.items()
        ],
    }
    return json.dumps(config, indent=2)  # JSON is YAML


async def query(client: httpx.AsyncClient, expr: str) -> tuple[str | None, list[dict[str, Any]]]:
    """(error, result) of an instant query at now."""
    response = await client.get("/api/v1/query", params={"query": expr})
    body = response.json()
    if body.get("status") != "success":
        return f"{body.get('errorType')}: {body.get('error')}", []
    result: list[dict[str, Any]] = body["data"]["result"] if body["data"]["resultType"] == "vector" else []
    if body["data"]["resultType"] == "scalar":
        result = [{"metric": {}, "value": body["data"]["result"]}]
    return None, result


def _describe(sample: dict[str, Any]) -> str:
    labels = ", ".join(f"{k}={v}" for k, v in sorted(sample["metric"].items()) if k not in ("instance", "__name__"))
    return f"{{{labels}}} {float(sample['value'][1]):.4g}"


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


async def _wait_prometheus(prometheus: Proc, url: str) -> None:
    await wait_for_200(
        prometheus,
        f"{url}/-/ready",
        PROMETHEUS_START_POLLS,
        poll=POLL,
        exited="prometheus exited",
        timed_out="prometheus was not ready within the bound",
    )


# --- the activity the dashboards describe -----------------------------------------------------------


async def _scan(client: httpx.AsyncClient, body: dict[str, Any], path: str = SCANS) -> str:
    response = await client.post(path, json=body)
    assert response.status_code == 202, (response.status_code, response.text)
    scan_id: str = response.json()["scanId"]
    return scan_id


async def _finish(client: httpx.AsyncClient, scan_ids: list[str]) -> dict[str, dict[str, Any]]:
    statuses = await asyncio.gather(*(follow(client, f"{SCANS}/{sid}/status") for sid in scan_ids))
    return {sid: status for sid, (status, _) in zip(scan_ids, statuses, strict=True)}


def _document(topic: str) -> dict[str, Any]:
    """A document nobody scanned before: its keyphrases cannot be cached, so KeyBERT runs."""
    words = " ".join(secrets.token_hex(3) for _ in range(12))
    text = (
        f"Notes on {topic}. Prometheus scrapes the workers every second. Queue depth, queue wait and retries "
        "are metrics; Grafana dashboards show them next to traces in Tempo and logs in Loki. "
        f"Unique words for this run: {words}. "
    )
    return {"title": f"Notes on {topic}", "text": text * 3}


async def _cause_activity(api_url: str, site: Site, live: Live) -> None:
    """Scans that succeed, fail, retry and die, and API requests answered 2xx and 4xx, in two rounds.

    The second round runs after Prometheus has scraped the first: a series the first round created
    then changes between two scrapes, so its rate() is not 0 and its quantiles are not NaN."""
    first_document, second_document = _document("queues"), _document("storage")
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as client:
        first = [
            await _scan(client, {"url": site.url("/pages/article.html")}),
            await _scan(client, {"url": site.url("/pages/product.html")}),
            await _scan(client, first_document, "/api/v1/documents"),  # KeyBERT runs
            await _scan(client, {"url": site.url("/status/404")}),  # FAILED http_error
            await _scan(client, {"url": site.url("/status/503")}),  # retried, then dead
            await _scan(client, {"url": site.url("/slow")}),  # times out: active, retried, then dead
        ]
        # Requests answered 4xx, and the queues endpoint.
        assert (await client.get(f"{SCANS}/{secrets.token_hex(16)}/status")).status_code in (404, 422)
        assert (await client.post(SCANS, json={"url": 42})).status_code == 422
        assert (await client.get("/api/v1/queues")).status_code == 200
        done = await _finish(client, first)
        await asyncio.sleep(3)  # three scrapes
        second = [
            await _scan(client, {"url": site.url("/pages/article.html")}),  # PSI from its cache
            await _scan(client, {"url": site.url(f"/pages/product.html?round={secrets.token_hex(4)}")}),  # PSI miss
            await _scan(client, first_document, "/api/v1/documents"),  # keyphrases from the cache
            await _scan(client, second_document, "/api/v1/documents"),  # KeyBERT runs again
            await _scan(client, {"url": site.url("/status/404")}),
        ]
        assert (await client.get(f"{SCANS}/{secrets.token_hex(16)}/status")).status_code in (404, 422)
        done |= await _finish(client, second)
        assert (await client.get("/api/v1/queues")).status_code == 200
    for sid, status in done.items():
        error = status.get("error") or {}
        live.scans[sid] = f"{status['status']} {error.get('type', '')}".strip()
    outcomes = sorted(live.scans.values())
    expected = ["FAILED http_error"] * 2 + ["FAILED retries_exhausted"] * 2 + ["FULL_READY"] * 7
    assert outcomes == expected, f"the scans did not end as planned: {outcomes}"


async def _wait_scraped(client: httpx.AsyncClient, live: Live) -> None:
    """Until Prometheus has scraped the last scan's metrics (bounded)."""
    completed = sum(1 for s in live.scans.values() if s == "FULL_READY")
    failed = len(live.scans) - completed
    checks = {
        "sum(pagelens_scan_end_to_end_seconds_count)": completed,
        "sum(pagelens_scan_errors_total)": failed,
        f'sum(max by (queue) (pagelens_queue_size{{queue="{live.queue}", state="dead"}}))': 2,
    }
    last: dict[str, float] = {}
    for _ in range(SCRAPED_POLLS):
        for expr in checks:
            error, result = await query(client, expr)
            assert error is None, (expr, error)
            last[expr] = float(result[0]["value"][1]) if result else -1.0
        if all(last[expr] >= want for expr, want in checks.items()):
            await asyncio.sleep(3)  # a few more scrapes: rate() needs two samples of each new series
            return
        await asyncio.sleep(POLL)
    pytest.fail(f"Prometheus did not see the scans' metrics within the bound: {last} (want {checks})")


# --- the stack ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def live(
    tmp_path_factory: pytest.TempPathFactory,
    migrated_database: Callable[[], Awaitable[str]],
    redis_url: str,
    site: Site,
) -> AsyncIterator[Live]:
    prometheus_bin = binaries.require("prometheus")
    assert prometheus_bin is not None
    exporter_bins = {
        "postgres-exporter": binaries.optional("prometheus-postgres-exporter"),
        "redis-exporter": binaries.optional("prometheus-redis-exporter"),
    }
    # A database of its own: the queue sampler counts retry/dead scans over the whole scans table.
    database_url = await migrated_database()
    logs = tmp_path_factory.mktemp("prometheus-live")
    queue = f"pagelens:prom:{secrets.token_hex(4)}"
    ports = {name: free_port() for name in ("api", "worker", "prometheus", *EXPORTER_JOBS)}
    processes: dict[str, Proc] = {}
    children: list[psutil.Process] = []
    with serve_fake_psi() as psi, serve_fake_llm() as llm:
        common = {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "PAGELENS_QUEUE": queue,
            "PAGELENS_FETCH_ALLOW_HOSTS": f"127.0.0.1:{site.port}",
            "PAGELENS_WORKER_METRICS_PORT": str(ports["worker"]),
            "PAGELENS_QUEUE_SAMPLE_INTERVAL": "1",
            "PAGELENS_MAX_TRIES": "2",
            "PAGELENS_FETCH_TIMEOUT": "2",
            "PSI_API_KEY": "test-key",
            "PSI_BASE_URL": psi.base_url,
            "LLM_BASE_URL": llm.base_url,
            "LLM_API_KEY": "test-key",
            "LLM_MODEL": "fake-model",
            "PAGELENS_LOG_LEVEL": "INFO",
        }
        targets = {
            "pagelens-api": f"127.0.0.1:{ports['api']}",
            "pagelens-worker": f"127.0.0.1:{ports['worker']}",
        }
        try:
            api_url = f"http://127.0.0.1:{ports['api']}"
            api_command = [
                sys.executable,
                *("-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(ports["api"])),
            ]
            processes["api"] = start_process("api", api_command, process_env(**common), logs)
            # The plain arq worker (polling): `arq worker.WorkerSettings` must keep working as deployed.
            worker_command = [sys.executable, "-m", "arq", "worker.WorkerSettings"]
            processes["worker"] = start_process("worker", worker_command, process_env(**common), logs)
            pg_bin, redis_bin = exporter_bins["postgres-exporter"], exporter_bins["redis-exporter"]
            if pg_bin:
                address = f"127.0.0.1:{ports['postgres-exporter']}"
                command = [pg_bin, f"--web.listen-address={address}", f"--extend.query-path={PG_QUERIES}"]
                env = process_env(DATA_SOURCE_NAME=_libpq_dsn(database_url))
                processes["postgres-exporter"] = start_process("postgres-exporter", command, env, logs)
                targets["postgres-exporter"] = address
            if redis_bin:
                address = f"127.0.0.1:{ports['redis-exporter']}"
                command = [redis_bin, f"-web.listen-address={address}", f"-redis.addr={redis_url}"]
                processes["redis-exporter"] = start_process("redis-exporter", command, process_env(), logs)
                targets["redis-exporter"] = address
            config = logs / "prometheus.yml"
            rule_files = [str(ALERT_RULES)] if ALERT_RULES.exists() else []
            config.write_text(_prometheus_config(targets, rule_files))
            prometheus_url = f"http://127.0.0.1:{ports['prometheus']}"
            prometheus_command = [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={logs / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
                "--log.level=warn",
            ]
            processes["prometheus"] = start_process("prometheus", prometheus_command, process_env(), logs)
            await _wait_prometheus(processes["prometheus"], prometheus_url)
            await wait_api_ready(processes["api"], api_url)
            worker_metrics = f"http://{targets['pagelens-worker']}/metrics"
            await wait_worker_ready(processes["worker"], worker_metrics, ports["worker"])
            exporters = tuple(job for job in EXPORTER_JOBS if job in targets)
            state = Live(prometheus_url, queue, exporters, processes)
            await _cause_activity(api_url, site, state)
            async with httpx.AsyncClient(base_url=prometheus_url, timeout=QUERY_TIMEOUT) as client:
                await _wait_scraped(client, state)
            yield state
            children = child_processes(processes["worker"])
        finally:
            if "worker" in processes:
                children = children or child_processes(processes["worker"])
            for name in ("prometheus", "worker", "api", *EXPORTER_JOBS):
                if name in processes:
                    stop_process(processes[name])
            for p in await wait_children_gone(children):  # ours: started by the worker we started
                with contextlib.suppress(psutil.Error):
                    p.kill()


# --- the tests ------------------------------------------------------------------------------------------


async def test_every_scrape_target_is_up(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.prometheus_url, timeout=QUERY_TIMEOUT) as client:
        response = await client.get("/api/v1/targets", params={"state": "active"})
    targets = response.json()["data"]["activeTargets"]
    health = {t["labels"]["job"]: (t["health"], t.get("lastError", "")) for t in targets}
    expected = set(PAGELENS_JOBS) | set(live.exporters)
    assert set(health) == expected, health
    down = {job: h for job, h in health.items() if h[0] != "up"}
    assert not down, f"scrape targets not up: {down}"


async def test_exporter_metrics_the_dashboards_read_exist(live: Live) -> None:
    if not live.exporters:
        pytest.skip("no exporter binary installed")
    wanted = {name: "postgres-exporter" for name in pg_query_metrics()}
    wanted |= {name: "postgres-exporter" if name.startswith("pg_") else "redis-exporter" for name in EXPORTER_LABELS}
    missing = []
    async with httpx.AsyncClient(base_url=live.prometheus_url, timeout=QUERY_TIMEOUT) as client:
        for name, job in sorted(wanted.items()):
            if job not in live.exporters:
                continue
            error, result = await query(client, f'count({name}{{job="{job}"}})')
            assert error is None, (name, error)
            if not result:
                missing.append(name)
            # Labels the dashboards group by must be real labels of the series.
            error, series = await query(client, f'{name}{{job="{job}"}}')
            assert error is None, (name, error)
            for sample in series:
                extra = (
                    set(sample["metric"])
                    - {"__name__", "job", "instance"}
                    - (EXPORTER_LABELS.get(name) or pg_query_metrics().get(name) or frozenset())
                )
                assert not extra, f"{name} has labels tests/promql.py does not know: {extra}"
    assert not missing, f"exporter metrics the dashboards read but the exporters do not export: {missing}"


async def test_variable_queries_list_this_test(live: Live) -> None:
    async with httpx.AsyncClient(base_url=live.prometheus_url, timeout=QUERY_TIMEOUT) as client:
        for uid, name, text in variable_queries():
            metric, label = text.removeprefix("label_values(").removesuffix(")").replace(" ", "").split(",")
            response = await client.get(f"/api/v1/label/{label}/values", params={"match[]": metric})
            values = response.json()["data"]
            want = {"queue": live.queue, "route": STATUS_ROUTE}[name]
            assert want in values, f"{uid} ${name}: {text} does not list {want!r}: {values}"


async def test_every_panel_query_runs_and_has_data(live: Live, record_property: Any) -> None:
    values = {**VARIABLE_VALUES, "queue": regex_escape(live.queue)}
    targets = prometheus_targets()
    assert targets
    parse_errors: list[str] = []
    results: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    exprs = {t.key: substitute(t.expr, values) for t in targets}
    skipped_exporters = {t.key for t in targets if _needs_missing_exporter(exprs[t.key], live)}
    pending: list[PromTarget] = list(targets)
    deadline = asyncio.get_running_loop().time() + DATA_WAIT
    async with httpx.AsyncClient(base_url=live.prometheus_url, timeout=QUERY_TIMEOUT) as client:
        while pending:
            still_empty = []
            for target in pending:
                error, result = await query(client, exprs[target.key])
                if error:
                    parse_errors.append(f"{target}\n    as sent: {exprs[target.key]}\n    {error}")
                    continue
                results[target.key] = result
                if not _finite(result) and target.key not in NO_DATA_EXPECTED and target.key not in skipped_exporters:
                    still_empty.append(target)
            pending = still_empty
            if not pending or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(1)
    no_data = [f"{t}\n    as sent: {exprs[t.key]}\n    got: {results.get(t.key)}" for t in pending]
    has_data_but_allowed = [key for key in NO_DATA_EXPECTED if _finite(results.get(key) or [])]
    unknown_allowed = [key for key in NO_DATA_EXPECTED if key not in exprs]

    lines = [f"{len(targets)} panel queries; {len(targets) - len(parse_errors)} parse"]
    for target in targets:
        found = results.get(target.key)
        if found is None:
            state = "ERROR"
        elif not found:
            state = "no data (allowed)" if target.key in NO_DATA_EXPECTED else "no data"
            state = "not checked (exporter missing)" if target.key in skipped_exporters else state
        else:
            state = f"{len(found)} series" + ("" if _finite(found) else ", all NaN")
        lines.append(f"  [{state}] {target.dashboard} / {target.panel} / {target.ref_id}")
        lines += [f"      {_describe(sample)}" for sample in (found or [])[:SHOWN_SERIES]]
    report = "\n".join(lines)
    print(report)
    record_property("panel_report", report)

    assert not parse_errors, "queries Prometheus rejects:\n" + "\n".join(parse_errors)
    assert not no_data, (
        "panels without data (no series, or only NaN) although the test caused what they show:\n" + "\n".join(no_data)
    )
    assert not unknown_allowed, f"allow-list entries for panels that do not exist: {unknown_allowed}"
    assert not has_data_but_allowed, (
        f"allow-listed panels that have data now (drop them from the list): {has_data_but_allowed}"
    )
    if os.environ.get("CI") == "true":
        assert not skipped_exporters


async def test_queue_states_the_scans_went_through_were_exported(live: Live, record_property: Any) -> None:
    """What pagelens_queue_size showed while the scans ran (the sampler runs every second here)."""
    peaks = {}
    async with httpx.AsyncClient(base_url=live.prometheus_url, timeout=QUERY_TIMEOUT) as client:
        for state in ("pending", "deferred", "active", "retry", "dead"):
            expr = f'max(max_over_time(pagelens_queue_size{{queue="{live.queue}", state="{state}"}}[10m]))'
            error, result = await query(client, expr)
            assert error is None and result, (expr, error)
            peaks[state] = float(result[0]["value"][1])
    report = f"peak pagelens_queue_size by state during the test: {peaks}"
    print(report)
    record_property("queue_states", report)
    # A timing-out scan is active for seconds at a time; the dead ones stay dead. A retry waits
    # only its backoff (0.5-1 s here), which a 1 s sample may or may not catch: reported only.
    assert peaks["active"] >= 1, peaks
    assert peaks["dead"] == 2, peaks


def _needs_missing_exporter(expr: str, live: Live) -> bool:
    uses = {"postgres-exporter": expr.count("pg_") > 0, "redis-exporter": "redis_" in expr}
    return any(used and job not in live.exporters for job, used in uses.items())


async def test_every_alert_rule_runs(live: Live, record_property: Any) -> None:
    rules_in_file = alert_rules()
    if not rules_in_file:
        pytest.skip(f"{ALERT_RULES} does not exist yet")
    async with httpx.AsyncClient(base_url=live.prometheus_url, timeout=QUERY_TIMEOUT) as client:
        loaded = await _loaded_rules(client, len(rules_in_file))
        problems, lines = [], []
        for rule in loaded:
            name = rule["name"]
            if rule.get("health") == "err":
                problems.append(f"{name}: Prometheus failed evaluating it: {rule.get('lastError')}")
            error, result = await query(client, rule["query"])
            if error:
                problems.append(f"{name}: {error}\n    {rule['query']}")
                continue
            state = f"{len(result)} series" if result else "no data"
            extra = f", state {rule['state']}" if rule["type"] == "alerting" else ""
            lines.append(f"  [{state}{extra}] {rule['type']} {name}: {rule['query']}")
    report = f"{len(loaded)} rules loaded from {ALERT_RULES.name}\n" + "\n".join(lines)
    print(report)
    record_property("alert_report", report)
    assert not problems, "\n".join(problems)


async def _loaded_rules(client: httpx.AsyncClient, expected: int) -> list[dict[str, Any]]:
    """The rules Prometheus loaded, once each has been evaluated at least once (bounded)."""
    rules: list[dict[str, Any]] = []
    for _ in range(20):
        response = await client.get("/api/v1/rules")
        rules = [r for g in response.json()["data"]["groups"] for r in g["rules"]]
        if len(rules) >= expected and all(r.get("health") in ("ok", "err") for r in rules):
            break
        await asyncio.sleep(POLL)
    assert len(rules) == expected, f"Prometheus loaded {len(rules)} rules, the file has {expected}"
    return rules


async def test_keda_trigger_queries_run_on_real_metrics(live: Live, record_property: Any) -> None:
    """The worker autoscaler's queries (deploy/autoscaling/) answer one number, from real data."""
    lines = []
    async with httpx.AsyncClient(base_url=live.prometheus_url, timeout=QUERY_TIMEOUT) as client:
        for name, expr in keda_triggers().items():
            ours = expr.replace('queue="pagelens:queue"', f'queue="{live.queue}"')
            assert ours != expr, f"{name}: the query does not select the queue"
            error, result = await query(client, ours)
            assert error is None, (name, error)
            assert len(result) == 1 and _finite(result), (name, result)
            # Without the `or vector(0)` fallback, over the whole test: the metric itself has data.
            inner = ours.removesuffix("or vector(0)").strip().removesuffix("> 0").replace("[2m]", "[10m]")
            error, raw = await query(client, inner)
            assert error is None and _finite(raw), (name, inner, error, raw)
            lines.append(f"  {name}: {result[0]['value'][1]} now; {raw[0]['value'][1]} over the test  ({ours})")
    report = "KEDA triggers:\n" + "\n".join(lines)
    print(report)
    record_property("keda_report", report)
