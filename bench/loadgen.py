"""A small HTTP/1.1 load generator, run as its own process: `python -m bench.loadgen CONFIG_JSON OUT`.

Raw asyncio streams with keep-alive instead of an HTTP client library: on a 2-core machine the load
generator competes with the server it measures, so it has to cost as little CPU as possible.
Two kinds of load:
- closed loop: N connections, each sending its next request as soon as the previous one is
  answered; gives the most requests per second the server manages (and their latency then);
- open loop: requests start at a fixed rate whatever the server does, each taking an idle
  connection of a pool; latency runs from when a request was due, so a server falling behind
  shows as waiting time (no "coordinated omission").
Requests of the first `warmup` seconds are sent but not counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the dev deps


@dataclass(frozen=True)
class Load:
    host: str
    port: int
    path: str
    body: str  # a JSON template; "{n}" becomes the request's number, so every request differs
    seconds: float
    warmup: float
    concurrency: int = 0  # closed loop with this many connections, or
    rate: float = 0.0  # open loop at this many requests per second
    connections: int = 64  # the open loop's pool
    server_pid: int = 0  # when set, the server process's CPU over the measured window is reported

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # the measured window
    late_ms: float = 0.0  # open loop: how far behind schedule the generator itself fell, at most
    server_cpu_seconds: float = 0.0  # user + system, from when measurement starts to the last answer

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        return cls(*await asyncio.open_connection(host, port))

    async def post(self, host: str, path: str, body: bytes) -> int:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        status = int((await self.reader.readline()).split(b" ", 2)[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


class ServerCpu:
    """The server's CPU time (all threads) between `start` and `stop`: sampled here, where the
    measured window begins and ends, so the warm-up's CPU is not divided by the measured requests."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid) if pid else None
        self.began: float | None = None

    def _now(self) -> float:
        assert self.process is not None
        times = self.process.cpu_times()
        return float(times.user + times.system)

    async def start_at(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.perf_counter()))
        if self.process is not None:
            self.began = self._now()

    def stop(self) -> float:
        """The CPU seconds the server used since `start_at` fired (0 when no server pid was given)."""
        return self._now() - self.began if self.process is not None and self.began is not None else 0.0


async def run(load: Load) -> LoadResult:
    result = LoadResult(seconds=load.seconds)
    cpu = ServerCpu(load.server_pid)
    statuses: Counter[int] = Counter()
    count = 0

    def body() -> bytes:
        nonlocal count
        count += 1
        return load.body.replace("{n}", str(count)).encode()

    start = time.perf_counter()
    measured_from = start + load.warmup
    end = measured_from + load.seconds

    def record(began: float, status: int) -> None:
        if began >= measured_from:
            result.latencies_ms.append((time.perf_counter() - began) * 1000)
            statuses[status] += 1

    if load.concurrency:
        sampler = asyncio.create_task(cpu.start_at(measured_from))

        async def client() -> None:
            conn = await Connection.open(load.host, load.port)
            try:
                while (began := time.perf_counter()) < end:
                    record(began, await conn.post(load.host, load.path, body()))
            finally:
                await conn.close()

        await asyncio.gather(*(client() for _ in range(load.concurrency)))
        await sampler
        result.server_cpu_seconds = cpu.stop()
    else:
        idle: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(load.connections):
            idle.put_nowait(await Connection.open(load.host, load.port))
        start = time.perf_counter()  # the schedule starts once the pool is open
        measured_from, total = start + load.warmup, int(load.rate * (load.warmup + load.seconds))
        sampler = asyncio.create_task(cpu.start_at(measured_from))

        async def fire(due: float) -> None:
            conn = await idle.get()
            try:
                record(due, await conn.post(load.host, load.path, body()))
            finally:
                idle.put_nowait(conn)

        fired: list[asyncio.Task[None]] = []
        for i in range(total):
            due = start + i / load.rate
            if (wait := due - time.perf_counter()) > 0:
                await asyncio.sleep(wait)
            else:
                result.late_ms = max(result.late_ms, -wait * 1000)
            fired.append(asyncio.create_task(fire(due)))
        await asyncio.gather(*fired, sampler)
        result.server_cpu_seconds = cpu.stop()
        while not idle.empty():
            await idle.get_nowait().close()
    result.statuses = {str(code): n for code, n in sorted(statuses.items())}
    return result


def main(argv: Sequence[str]) -> int:
    load = Load(**json.loads(argv[0]))
    try:
        import uvloop  # uvicorn[standard] brings it: a cheaper event loop for the generator

        result = uvloop.run(run(load))
    except ImportError:
        result = asyncio.run(run(load))
    Path(argv[1]).write_text(json.dumps(dataclasses.asdict(result)))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m bench.loadgen LOAD_JSON OUT_JSON")
    sys.exit(main(sys.argv[1:]))
