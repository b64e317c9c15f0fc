"""`make bench`'s benchmarks, each run tiny: their records are complete and consistent. Never how fast."""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import urllib.request
from pathlib import Path

import asyncpg
import pytest
import redis
from pytest import approx

from app.cli.embedded import free_port
from bench.api_load import SERVERS, ApiConfig
from bench.api_load import run as run_api
from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    OtlpSink,
    RedisTarget,
    Service,
    Table,
    child_env,
    isolated_database,
    markers,
    percentile,
    postgres_target,
    redis_target,
    replace_section,
    sweep_queue,
    uvicorn_command,
)
from bench.e2e import STAGES, E2EConfig
from bench.e2e import run as run_e2e
from bench.e2e_audit import AuditConfig
from bench.e2e_audit import run as run_e2e_audit
from bench.keyphrases import KeyphraseConfig
from bench.keyphrases import run as run_keyphrases
from bench.queue_hop import HopConfig, run
from bench.real_pages import DocPage, doc_pages
from bench.worker_throughput import BEFORE, DEFAULT, MEASURES, ROLES, ThroughputConfig, deal
from bench.worker_throughput import run as run_throughput

JOBS = 20


def keys(url: str, pattern: str) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=pattern, count=1000))
    finally:
        client.close()


def test_queue_hop_records_are_complete_and_consistent() -> None:
    config = HopConfig(
        jobs=JOBS, slow_jobs=JOBS, latency_samples=JOBS, slow_latency_samples=3, warmup=5, reps=2, idle_seconds=0.2
    )
    with redis_target() as target:
        result = run(config, target)
        leftovers = keys(target.url, f"*{result.token}*")
    assert leftovers == []

    assert [s.variant.name for s in result.summaries] == ["bare-default", "bare-tuned", "pagelens-before", "pagelens"]
    for summary in result.summaries:
        assert [run.rep for run in summary.runs] == list(range(config.reps))
        for record in summary.runs:
            assert record.jobs == record.started == record.finished == JOBS
            assert len(record.latencies_ms) == config.samples_for(summary.variant)
            assert min(record.latencies_ms) > 0
            assert record.seconds > 0
            assert record.cpu_seconds > 0
            assert record.idle_cpu_percent >= 0
            assert record.latency(50) <= record.latency(95) <= record.latency(99) <= max(record.latencies_ms)
        assert summary.latency(50) <= summary.latency(95) <= summary.latency(99)
        assert summary.samples == sum(config.samples_for(summary.variant) for _ in summary.runs)
        assert summary.throughput > 0

    bare = [record for name in ("bare-default", "bare-tuned") for record in result.summary(name).runs]
    assert all(record.spans_exported == 0 for record in bare)
    for record in [*result.summary("pagelens-before").runs, *result.summary("pagelens").runs]:
        # At least a PRODUCER and a CONSUMER span for every job of the run, all received by the sink.
        jobs = config.warmup + record.jobs + len(record.latencies_ms)
        assert record.spans_exported >= 2 * jobs
    # Only the production variant is woken on enqueue; it samples at the pace of a tuned poll.
    assert [s.variant.wake for s in result.summaries] == [False, False, False, True]
    assert result.summary("pagelens").samples == config.reps * config.latency_samples

    # The ratios come from this run's own figures.
    pagelens, tuned, default = (result.summary(n) for n in ("pagelens", "bare-tuned", "bare-default"))
    assert result.throughput_vs_tuned == approx(pagelens.throughput / tuned.throughput)
    assert result.throughput_vs_default == approx(pagelens.throughput / default.throughput)
    assert result.p50_vs("bare-tuned") == approx(pagelens.latency(50) / tuned.latency(50))
    assert result.paired_throughput_vs_tuned == approx(
        [p.throughput / t.throughput for p, t in zip(pagelens.runs, tuned.runs, strict=True)]
    )

    report = result.bench_result()
    assert report.name == "queue_hop"
    assert len(report.table.rows) == 4
    assert all(len(row) == len(report.table.headers) for row in report.table.rows)
    assert f"{result.throughput_vs_tuned:.2f}x" in report.notes[1]


def test_percentile_interpolates_between_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0


def test_replace_section_keeps_everything_outside_the_markers() -> None:
    start, end = markers("queue_hop")
    other_start, other_end = markers("api_load")
    document = (
        f"# Performance\n\nintro\n\n{start}\nold figures\n{end}\n\n{other_start}\nkeep me\n{other_end}\n\nafter\n"
    )
    updated = replace_section(document, "queue_hop", "new figures\n")
    assert updated == document.replace("old figures", "new figures")
    assert replace_section(updated, "queue_hop", "new figures\n") == updated

    appended = replace_section("# Performance\n", "keyphrases", "figures")
    assert appended == f"# Performance\n\n{markers('keyphrases')[0]}\nfigures\n{markers('keyphrases')[1]}\n"


def test_a_skipped_benchmark_leaves_its_results_section_alone(tmp_path: Path) -> None:
    from bench.__main__ import run_benchmarks

    doc = tmp_path / "performance.md"
    start, end = markers("measured")
    skip_start, skip_end = markers("skipping")
    doc.write_text(f"{start}\nold figures\n{end}\n{skip_start}\nkept\n{skip_end}\n")

    def result(name: str, skipped: str = "") -> BenchResult:
        return BenchResult(name, name, Table(("x",), (("1",),)), (), "here", 0.0, skipped=skipped)

    chosen = (
        Benchmark("measured", lambda _: result("measured"), doc),
        Benchmark("skipping", lambda _: result("skipping", skipped="no pages here"), doc),
    )
    results = run_benchmarks(chosen)
    assert [r.skipped for r in results] == ["", "no pages here"]
    text = doc.read_text()
    assert "old figures" not in text and "| x |" in text  # the measured one was rewritten
    assert f"{skip_start}\nkept\n{skip_end}" in text  # the skipped one was not


def test_table_renders_markdown_and_text() -> None:
    table = Table(("variant", "jobs/s"), (("bare", "1,600"), ("pagelens", "900")))
    assert table.markdown().splitlines() == [
        "| variant | jobs/s |",
        "| --- | --: |",
        "| bare | 1,600 |",
        "| pagelens | 900 |",
    ]
    assert table.text().splitlines()[2] == "bare       1,600"


def test_api_load_measures_both_servers_under_both_loads() -> None:
    config = ApiConfig(reps=2, seconds=0.5, warmup=0.2, concurrency=4, rate=40, connections=4)
    with redis_target() as target:
        result = run_api(config, BenchContext(target))
        leftovers = keys(target.url, "pagelens-bench:*:api:*")
    assert leftovers == []  # queues and their jobs deleted

    names = [s.name for s in SERVERS]
    assert names == ["bare", "peer", "pagelens", "sampled", "untraced"]
    assert len(result.turns) == config.reps * len(SERVERS) * 2
    for turn in result.turns:
        assert turn.result.latencies_ms, turn
        assert turn.accepted == len(turn.result.latencies_ms)  # every request got its 202
        assert turn.server_cpu_seconds > 0
    for name in names:
        assert [t.rep for t in result.of(name, "closed")] == [0, 1]
        assert result.throughput(name) > 0
        assert result.latency(name, "open", 50) <= result.latency(name, "open", 99)
    assert result.failed == 0
    assert result.spans_exported > 0  # only the traced server exports
    assert result.ratio == approx(result.throughput("pagelens") / result.throughput("bare"))

    report = result.bench_result()
    assert report.name == "api" and len(report.table.rows) == len(SERVERS)
    assert f"{result.ratio:.2f}x" in report.notes[0]
    assert result.cpu_ratio == approx(result.cpu_per_request_us("pagelens") / result.cpu_per_request_us("bare"))
    assert result.peer_ratio == approx(result.throughput("pagelens") / result.throughput("peer"))
    verdicts = [note for note in report.notes if "target" in note]
    assert len(verdicts) == 4 and all(": met" in note or ": NOT met" in note for note in verdicts)


def test_peer_api_answers_202_stores_the_scan_enqueues_the_job_and_exports_spans() -> None:
    """The API benchmark's typical peer does the same work as pagelens's route, traced."""
    queue = f"pagelens-bench:{secrets.token_hex(4)}:peer-test"
    with (
        redis_target() as target,
        postgres_target() as postgres,
        isolated_database(postgres.dsn, f"pagelens_peer_{secrets.token_hex(4)}") as dsn,
        OtlpSink() as sink,
        tempfile.TemporaryDirectory() as tmp,
    ):
        port = free_port()
        env = child_env(
            DATABASE_URL=dsn,
            REDIS_URL=target.url,
            PAGELENS_QUEUE=queue,
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=sink.endpoint,
        )
        base = f"http://127.0.0.1:{port}"
        service = Service.start("peer", uvicorn_command("bench.peer_api:app", port), env, Path(tmp), f"{base}/healthz")
        try:
            body = json.dumps({"url": "https://shop.example.com/articles/1"}).encode()
            request = urllib.request.Request(
                f"{base}/api/v1/scan-jobs", body, {"Content-Type": "application/json"}, method="POST"
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                status, location, reply = answer.status, answer.headers["Location"], json.loads(answer.read())
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as answer:
                exposition = answer.read().decode()
        finally:
            service.stop()  # flushes the batch span processor on shutdown
        try:
            scan_id = reply["scanId"]
            assert status == 202 and reply["status"] == "QUEUED"
            assert location == reply["statusUrl"] == f"/api/v1/scan-jobs/{scan_id}/status"
            assert "http_requests_total" in exposition  # prometheus-fastapi-instrumentator

            async def stored() -> str | None:
                conn = await asyncpg.connect(dsn)
                try:
                    url: str | None = await conn.fetchval("SELECT url FROM scans WHERE id = $1", scan_id)
                    return url
                finally:
                    await conn.close()

            assert asyncio.run(stored()) == "https://shop.example.com/articles/1"
            client = redis.Redis.from_url(target.url)
            try:
                assert client.zrange(queue, 0, -1) == [scan_id.encode()]
            finally:
                client.close()
            # SERVER (and FastAPI's internal send spans), the INSERT, the PRODUCER, arq's Redis calls.
            assert sink.spans >= 4
        finally:
            sweep_queue(target.url, queue)


@pytest.mark.slow
def test_keyphrases_compares_the_pool_with_plain_keybert_on_the_same_pages() -> None:
    config = KeyphraseConfig(pages=3, warmup_pages=2, reps=2, concurrency=3, processes=1)
    result = run_keyphrases(config, BenchContext(RedisTarget("redis://unused", "none")))
    assert len(result.reps) == config.reps
    for rep in result.reps:
        assert rep.plain.pages == rep.pagelens.pages == config.pages
        assert rep.plain.seconds > 0 and rep.pagelens.seconds > 0
        assert rep.identical == config.pages  # the same keyphrases and scores on every page
        assert rep.calls >= 1 and 0 <= rep.embedded <= rep.phrases
        assert rep.lag_ms  # the probe ran while the pool worked
    assert all(set(counts.values()) == {1} for counts in result.load_counts.values())  # loaded once each
    assert result.rss_mb["pagelens"] > result.rss_mb["parent"] > 0  # the model lives in the child
    assert result.ratio == approx(result.docs_per_second("pagelens") / result.docs_per_second("plain"))
    report = result.bench_result()
    assert report.name == "keyphrases" and len(report.table.rows) == 2
    assert f"{config.pages * config.reps} of {config.pages * config.reps} pages" in report.notes[1]


@pytest.mark.slow
def test_e2e_measures_scans_from_submit_to_full_report() -> None:
    config = E2EConfig(pages=3, idle_pages=2, warmup_pages=1, workers=(1,))
    with redis_target() as target:
        result = run_e2e(config, BenchContext(target))
        leftovers = keys(target.url, "pagelens-bench:*:e2e*")
    assert leftovers == []
    assert [(p.workers, p.shape) for p in result.phases] == [(1, "idle"), (1, "burst")]
    for phase, count in zip(result.phases, (config.idle_pages, config.pages), strict=True):
        assert phase.failed == 0 and len(phase.latencies_s) == count
        assert all(latency > 0 for latency in phase.latencies_s)
        assert phase.span_s >= max(phase.latencies_s)
        assert set(STAGES) <= set(phase.stage_ms)  # a URL scan times every stage
        assert phase.worker_rss_mb > 0
    # Every page was new (its keyphrases extracted, not read from the cache), and the run's cache
    # entries are gone again.
    assert result.cache_entries == result.pages == config.warmup_pages + config.idle_pages + config.pages
    report = result.bench_result()
    assert report.name == "e2e" and len(report.table.rows) == 2


@pytest.mark.slow
def test_e2e_audit_compares_the_same_pages_with_the_audit_on_and_off() -> None:
    config = AuditConfig(pages=2, reps=2, warmup_pages=1)
    with redis_target() as target:
        result = run_e2e_audit(config, BenchContext(target))
        leftovers = keys(target.url, "pagelens-bench:*:e2e*")
    assert leftovers == []
    for side in (result.on, result.off):
        assert side.failed == 0
        assert [len(rep) for rep in side.latencies_s] == [config.pages] * config.reps
        assert all(latency > 0 for rep in side.latencies_s for latency in rep)
        assert side.p(50) <= side.p(95)
    # Only the audited side audits, and it read robots.txt and llms.txt once for the origin.
    assert (result.on.with_audit, result.off.with_audit) == (result.on.scans, 0)
    assert result.file_hits == {"/robots.txt": 1, "/llms.txt": 1}
    # Every measured and warm-up scan extracted its keyphrases (its entry was there to delete).
    assert result.cache_entries == 2 * (config.pages * config.reps + config.warmup_pages)
    assert result.ratio(50) == approx(result.on.p(50) / result.off.p(50))
    report = result.bench_result()
    assert report.name == "e2e_audit" and len(report.table.rows) == 2
    assert f"{result.ratio(50):.2f}x" in report.notes[0]


def test_real_pages_are_dealt_into_disjoint_sets_of_like_cost() -> None:
    pages = [DocPage(f"p{i}", "word " * (100 + i)) for i in range(40)]
    sets = deal(pages, 3, 10)
    keys = [page.key for group in sets for page in group]
    assert [len(group) for group in sets] == [10, 10, 10] and len(set(keys)) == 30
    sizes = [sum(len(page.body) for page in group) for group in sets]
    assert max(sizes) - min(sizes) <= 2 * 5 * 10  # round-robin over pages sorted by size
    with pytest.raises(RuntimeError):
        deal(pages, 5, 10)


@pytest.mark.slow
def test_worker_throughput_measures_each_configuration_on_fresh_real_pages() -> None:
    if not doc_pages():
        pytest.skip("python3-doc is not installed")
    config = ThroughputConfig(burst=2, warmup=1, reps=1, configs=(BEFORE, DEFAULT))
    with redis_target() as target:
        result = run_throughput(config, BenchContext(target))
        leftovers = keys(target.url, "pagelens-bench:*:worker*")
    assert leftovers == []
    # Every page was new (its keyphrases extracted and cached once), and the entries are gone again.
    assert result.cache_entries == result.pages == 2 * (config.burst + config.warmup)
    assert [b.config for b in result.bursts] == [BEFORE, DEFAULT]
    for burst in result.bursts:
        assert burst.scans == config.burst and burst.failed == 0 and burst.span_s > 0
        assert burst.memory.processes["worker"] == 1 and burst.memory.processes["keybert"] == 1
        memory = burst.memory
        assert burst.memory.processes["parse"] >= burst.config.parse  # (and the resource tracker)
        for m in MEASURES:
            assert all(memory.idle[m][role] > 0 and memory.peak[m][role] > 0 for role in ROLES), m
            assert memory.peak_total[m] >= memory.idle_total[m] * 0.5
        # Shared pages count once per process in RSS, divided among them in PSS, not at all in USS.
        assert memory.peak_total["uss"] <= memory.peak_total["pss"] <= memory.peak_total["rss"]
        assert burst.cpu_cores["keybert"] > 0
    report = result.bench_result()
    assert report.name == "worker_throughput" and len(report.table.rows) == 2
