"""`POST /api/v1/scan-jobs` under load: pagelens's API against a bare Starlette endpoint doing the
same insert and enqueue (bench/bare_api.py) and against a typical peer (bench/peer_api.py: FastAPI
with OpenTelemetry auto-instrumentation and prometheus-fastapi-instrumentator), side by side in one
run.

Both run under uvicorn as separate processes on loopback, as `make run` and the Dockerfile start the
API (`--no-access-log`), against one PostgreSQL database created for the run (and dropped after it)
and one Redis, each with its own queue. pagelens runs as in production with a collector: every
request traced and exported over OTLP/HTTP (to a sink in this process), metrics on. The load comes
from a third process (bench/loadgen.py) in two shapes per server and repetition: a closed loop
(as many requests per second as the server manages) and an open loop at a fixed rate (the latency
a client sees at a given load). The servers take turns, in a rotating order; the scans table is
emptied and the enqueued jobs deleted between turns. Server CPU is the server process's (all
threads) over the measured window only, sampled by the load generator when it starts counting
requests and when the last counted one is answered.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
TITLE = "API: POST /api/v1/scan-jobs, pagelens vs bare Starlette and a typical peer"
PATH = "/api/v1/scan-jobs"
BODY = '{"url": "https://shop.example.com/articles/{n}"}'


# The goals (issue 16), each printed with its verdict on every run.
THROUGHPUT_TARGET = 0.6  # pagelens traced ÷ bare, closed loop
CPU_TARGET = 1.8  # server CPU per request, pagelens traced ÷ bare
P99_TARGET_MS = 30.0  # pagelens traced, open loop at ApiConfig.rate
PEER_TARGET = 2.0  # pagelens traced ÷ the typical peer, closed loop


@dataclass(frozen=True)
class Server:
    name: str
    label: str
    app: str  # the ASGI app uvicorn serves
    traced: bool  # spans exported over OTLP, as in production with a collector
    env: tuple[tuple[str, str], ...] = ()


SERVERS = (
    Server("bare", "bare Starlette: insert + arq enqueue_job", "bench.bare_api:app", traced=False),
    Server(
        "peer",
        "typical peer: FastAPI + OTel auto-instrumentation + prometheus-fastapi-instrumentator",
        "bench.peer_api:app",
        traced=True,
    ),
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

    def to_bare(self, server: str) -> float:
        return self.throughput(server) / self.throughput("bare")

    @property
    def ratio(self) -> float:
        return self.to_bare("pagelens")

    @property
    def cpu_ratio(self) -> float:
        """Server CPU per request, pagelens ÷ bare."""
        return self.cpu_per_request_us("pagelens") / self.cpu_per_request_us("bare")

    @property
    def peer_ratio(self) -> float:
        """Throughput, pagelens ÷ the typical peer."""
        return self.throughput("pagelens") / self.throughput("peer")

    def paired(self, server: str, other: str) -> tuple[float, ...]:
        """Throughput of `server` ÷ `other` within each repetition."""
        pairs = zip(self.of(server, "closed"), self.of(other, "closed"), strict=True)
        return tuple(p.result.requests_per_second / b.result.requests_per_second for p, b in pairs)

    @property
    def paired_ratios(self) -> tuple[float, ...]:
        return self.paired("pagelens", "bare")

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
            "÷ bare",
            "p50 ms",
            "p99 ms",
            f"p50 ms @ {c.rate:g}/s",
            f"p99 ms @ {c.rate:g}/s",
            "server CPU µs/req",
            "CPU ÷ bare",
        )
        bare_cpu = self.cpu_per_request_us("bare")
        rows = tuple(
            (
                s.label,
                f"{self.throughput(s.name):,.0f}",
                f"{self.to_bare(s.name):.2f}",
                fmt_ms(self.latency(s.name, "closed", 50)),
                fmt_ms(self.latency(s.name, "closed", 99)),
                fmt_ms(self.latency(s.name, "open", 50)),
                fmt_ms(self.latency(s.name, "open", 99)),
                f"{self.cpu_per_request_us(s.name):,.0f}",
                f"{self.cpu_per_request_us(s.name) / bare_cpu:.2f}",
            )
            for s in SERVERS
        )
        paired, peer = self.paired_ratios, self.paired("pagelens", "peer")
        p99 = self.latency("pagelens", "open", 99)
        notes = (
            f"throughput, pagelens / bare: **{self.ratio:.2f}x** (per repetition {min(paired):.2f}x to "
            f"{max(paired):.2f}x); target >= {THROUGHPUT_TARGET}x: {verdict(self.ratio >= THROUGHPUT_TARGET)}; "
            f"10% sampled: {self.to_bare('sampled'):.2f}x; with tracing off: {self.to_bare('untraced'):.2f}x",
            f"server CPU per request, pagelens / bare: **{self.cpu_ratio:.2f}x**; target <= {CPU_TARGET}x: "
            f"{verdict(self.cpu_ratio <= CPU_TARGET)}",
            f"pagelens p99 at {c.rate:g} req/s: **{fmt_ms(p99)} ms**; target <= {P99_TARGET_MS:g} ms: "
            f"{verdict(p99 <= P99_TARGET_MS)}",
            f"throughput, pagelens / typical peer: **{self.peer_ratio:.2f}x** (per repetition {min(peer):.2f}x to "
            f"{max(peer):.2f}x); target >= {PEER_TARGET}x: {verdict(self.peer_ratio >= PEER_TARGET)}",
            f"closed loop: {c.concurrency} connections; open loop: {c.rate:g} req/s over {c.connections} "
            f"connections (the load generator at most {fmt_ms(self.late_ms)} ms behind its schedule); "
            f"{c.seconds:g} s measured after {c.warmup:g} s of warm-up, per turn; medians of "
            f"{c.reps} repetitions, servers alternating; server CPU over the measured window only",
            f"answers other than 202: {self.failed}; spans exported by pagelens and the peer: "
            f"{self.spans_exported:,}; wall time {self.seconds:.0f} s",
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
    env = environment(
        context.redis, extra=f"PostgreSQL ({postgres.source})", packages=("starlette", "uvicorn", "fastapi")
    )
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
        server_pid=service.pid,
        **shaped,
    )
    out = tmp / f"load-{server.name}-{rep}-{shape}.json"
    log = out.with_suffix(".log")
    try:
        what = f"load on {server.name}"
        run_module("bench.loadgen", [load.to_json(), str(out)], out, log, config.client_timeout, what)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\n{server.name}'s log:\n{tail(service.log)}") from None
    result = LoadResult(**json.loads(out.read_text()))
    return Turn(server.name, rep, shape, result, result.server_cpu_seconds)


def bench(context: BenchContext) -> BenchResult:
    return run(ApiConfig(), context).bench_result()


BENCHMARK = Benchmark(NAME, bench)
