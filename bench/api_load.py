"""`POST /api/v1/scan-jobs` under load: pagelens's API against a bare Starlette endpoint doing the
same insert and enqueue (bench/bare_api.py), side by side in one run.

Both run under uvicorn as separate processes on loopback, as `make run` and the Dockerfile start the
API (`--no-access-log`), against one PostgreSQL database created for the run (and dropped after it)
and one Redis, each with its own queue. pagelens runs as in production with a collector: every
request traced and exported over OTLP/HTTP (to a sink in this process), metrics on. The load comes
from a third process (bench/loadgen.py) in two shapes per server and repetition: a closed loop
(as many requests per second as the server manages) and an open loop at a fixed rate (the latency
a client sees at a given load). The servers take turns, in a rotating order; the scans table is
emptied and the enqueued jobs deleted between turns.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev deps

from app.cli.embedded import free_port
from bench.common import (
    BenchContext,
    Benchmark,
    BenchResult,
    OtlpSink,
    Service,
    Table,
    child_env,
    environment,
    fmt_ms,
    isolated_database,
    median,
    percentile,
    postgres_target,
    rotated,
    run_module,
    run_sql,
    sweep_queue,
    tail,
    uvicorn_command,
    verdict,
)
from bench.loadgen import Load, LoadResult

NAME = "api"
TITLE = "API: POST /api/v1/scan-jobs, pagelens vs bare Starlette"
PATH = "/api/v1/scan-jobs"
BODY = '{"url": "https://shop.example.com/articles/{n}"}'


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    app: str  # the ASGI app uvicorn serves
    traced: bool  # spans exported over OTLP, as in production with a collector
    env: tuple[tuple[str, str], ...] = ()


SERVERS = (
    Server("bare", "bare Starlette: insert + arq enqueue_job", "bench.bare_api:app", traced=False),
    Server("pagelens", "pagelens API, as in production (every request traced)", "app.main:app", traced=True),
    # Head sampling, as a busy deployment might run: what it does (and does not) save.
    Server(
        "sampled",
        "pagelens API, 10% of new traces sampled",
        "app.main:app",
        traced=True,
        env=(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.1")),
    ),
    # Not a way to run pagelens: it shows what the tracing costs, and what pagelens's own code does.
    Server(
        "untraced", "pagelens API with OTEL_SDK_DISABLED=true", "app.main:app", False, (("OTEL_SDK_DISABLED", "true"),)
    ),
)


@dataclass(frozen=True)
class ApiConfig:
    reps: int = 3
    seconds: float = 8.0  # measured, per load shape and turn
    warmup: float = 2.0
    concurrency: int = 32  # closed loop
    rate: float = 200.0  # open loop, requests per second
    connections: int = 64  # the open loop's connection pool
    client_timeout: float = 120.0


@dataclass(frozen=True)
class Turn:
    """One server under one load shape."""

    server: str
    rep: int
    shape: str  # "closed" or "open"
    result: LoadResult
    server_cpu_seconds: float

    @property
    def accepted(self) -> int:
        return self.result.statuses.get("202", 0)

    @property
    def cpu_per_request_us(self) -> float:
        return self.server_cpu_seconds / len(self.result.latencies_ms) * 1e6 if self.result.latencies_ms else 0.0


@dataclass(frozen=True)
class ApiResult:
    config: ApiConfig
    turns: tuple[Turn, ...]
    seconds: float
    environment: str
    spans_exported: int

    def of(self, server: str, shape: str) -> list[Turn]:
        return [t for t in self.turns if t.server == server and t.shape == shape]

    def throughput(self, server: str) -> float:
        return median([t.result.requests_per_second for t in self.of(server, "closed")])

    def latency(self, server: str, shape: str, q: float) -> float:
        return median([percentile(t.result.latencies_ms, q) for t in self.of(server, shape)])

    def cpu_per_request_us(self, server: str) -> float:
        return median([t.cpu_per_request_us for t in self.of(server, "closed")])

    @property
    def ratio(self) -> float:
        return self.throughput("pagelens") / self.throughput("bare")

    @property
    def paired_ratios(self) -> tuple[float, ...]:
        pairs = zip(self.of("pagelens", "closed"), self.of("bare", "closed"), strict=True)
        return tuple(p.result.requests_per_second / b.result.requests_per_second for p, b in pairs)

    @property
    def late_ms(self) -> float:
        """How far behind its open-loop schedule the load generator fell, at most: a request sent late
        counts its lateness as latency, so a large figure is the generator's, not the server's."""
        return max((t.result.late_ms for t in self.turns if t.shape == "open"), default=0.0)

    @property
    def failed(self) -> int:
        return sum(len(t.result.latencies_ms) - t.accepted for t in self.turns)

    def bench_result(self) -> BenchResult:
        c = self.config
        headers = (
            "server",
            "req/s",
            "p50 ms",
            "p99 ms",
            f"p50 ms @ {c.rate:g}/s",
            f"p99 ms @ {c.rate:g}/s",
            "server CPU µs/req",
        )
        rows = tuple(
            (
                s.label,
                f"{self.throughput(s.name):,.0f}",
                fmt_ms(self.latency(s.name, "closed", 50)),
                fmt_ms(self.latency(s.name, "closed", 99)),
                fmt_ms(self.latency(s.name, "open", 50)),
                fmt_ms(self.latency(s.name, "open", 99)),
                f"{self.cpu_per_request_us(s.name):,.0f}",
            )
            for s in SERVERS
        )
        paired = self.paired_ratios
        p99 = self.latency("pagelens", "open", 99)
        untraced = self.throughput("untraced") / self.throughput("bare")
        sampled = self.throughput("sampled") / self.throughput("bare")
        notes = (
            f"throughput, pagelens / bare: **{self.ratio:.2f}x** (per repetition {min(paired):.2f}x to "
            f"{max(paired):.2f}x); target >= 0.85x: {verdict(self.ratio >= 0.85)}; 10% sampled: {sampled:.2f}x; "
            f"with tracing off: {untraced:.2f}x",
            f"pagelens p99 at {c.rate:g} req/s: **{fmt_ms(p99)} ms**; target <= 50 ms: {verdict(p99 <= 50)}",
            f"closed loop: {c.concurrency} connections; open loop: {c.rate:g} req/s over {c.connections} "
            f"connections (the load generator at most {fmt_ms(self.late_ms)} ms behind its schedule); "
            f"{c.seconds:g} s measured after {c.warmup:g} s of warm-up, per turn; medians of "
            f"{c.reps} repetitions, servers alternating",
            f"answers other than 202: {self.failed}; spans exported by pagelens: {self.spans_exported:,}; "
            f"wall time {self.seconds:.0f} s",
        )
        return BenchResult(NAME, TITLE, Table(headers, rows), notes, self.environment, self.seconds)


def run(config: ApiConfig, context: BenchContext) -> ApiResult:
    began = time.monotonic()
    token = secrets.token_hex(4)
    turns: list[Turn] = []
    with (
        postgres_target() as postgres,
        isolated_database(postgres.dsn, f"pagelens_bench_{token}") as dsn,
        OtlpSink() as sink,
        tempfile.TemporaryDirectory(prefix="pagelens-bench-api-") as tmp,
    ):
        servers: dict[str, tuple[Service, int]] = {}
        try:
            for server in SERVERS:
                servers[server.name] = _start(server, dsn, context, sink, token, Path(tmp))
            for rep in range(config.reps):
                for server in rotated(SERVERS, rep):
                    for shape in ("closed", "open"):
                        # An empty scans table, so no turn inserts into a bigger table than another.
                        run_sql(dsn, "TRUNCATE scans")
                        sweep_queue(context.redis.url, _queue(server, token))
                        service, port = servers[server.name]
                        turns.append(_turn(config, server, rep, shape, service, port, Path(tmp)))
        finally:
            for service, _ in servers.values():
                service.stop()
            for server in SERVERS:
                sweep_queue(context.redis.url, _queue(server, token))
        spans = sink.spans
    env = environment(context.redis, extra=f"PostgreSQL ({postgres.source})", packages=("starlette", "uvicorn"))
    return ApiResult(config, tuple(turns), time.monotonic() - began, env, spans)


def _queue(server: Server, token: str) -> str:
    return f"pagelens-bench:{token}:api:{server.name}"


def _start(
    server: Server, dsn: str, context: BenchContext, sink: OtlpSink, token: str, tmp: Path
) -> tuple[Service, int]:
    port = free_port()
    queue = _queue(server, token)
    env = child_env(DATABASE_URL=dsn, REDIS_URL=context.redis.url, PAGELENS_QUEUE=queue, **dict(server.env))
    if server.traced:
        # As in production with a collector: the OTLP/HTTP exporter, batched, to the sink.
        env.update(OTEL_TRACES_EXPORTER="otlp", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=sink.endpoint)
    command = uvicorn_command(server.app, port)
    return Service.start(server.name, command, env, tmp, f"http://127.0.0.1:{port}/healthz"), port


def _turn(config: ApiConfig, server: Server, rep: int, shape: str, service: Service, port: int, tmp: Path) -> Turn:
    shaped: dict[str, Any] = {"concurrency": config.concurrency} if shape == "closed" else {"rate": config.rate}
    load = Load(
        host="127.0.0.1",
        port=port,
        path=PATH,
        body=BODY,
        seconds=config.seconds,
        warmup=config.warmup,
        connections=config.connections,
        **shaped,
    )
    out = tmp / f"load-{server.name}-{rep}-{shape}.json"
    log = out.with_suffix(".log")
    cpu = psutil.Process(service.pid)
    before = sum(cpu.cpu_times()[:2])
    try:
        what = f"load on {server.name}"
        run_module("bench.loadgen", [load.to_json(), str(out)], out, log, config.client_timeout, what)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{server.name}'s log:\n{tail(service.log)}") from None
    used = sum(cpu.cpu_times()[:2]) - before
    result = LoadResult(**json.loads(out.read_text()))
    return Turn(server.name, rep, shape, result, used)


def bench(context: BenchContext) -> BenchResult:
    return run(ApiConfig(), context).bench_result()


BENCHMARK = Benchmark(NAME, bench)
