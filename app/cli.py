"""The `pagelens` command."""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from app import migrate
from app.embedded import backing_servers
from app.settings import ConfigError, Settings, child_env

API_HOST, API_PORT = "127.0.0.1", 8000


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    applied = asyncio.run(migrate.apply(settings.require_database_url(), settings.migrations_dir))
    print(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ", database is up to date")
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", "arq", "worker.WorkerSettings"])


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    # Longer than the worker's shutdown grace, so running scans can finish.
    deadline = time.monotonic() + 40
    for p in processes:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    """Everything for a developer: backing servers (embedded when not configured), migrations,
    the API and one worker, until Ctrl-C."""
    data_dir: Path = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    with backing_servers(data_dir, settings.database_url, settings.redis_url, probe_local=False) as (
        database_url,
        redis_url,
        started,
    ):
        env_file = data_dir / "env"
        env_file.write_text(f"DATABASE_URL={database_url}\nREDIS_URL={redis_url}\n")
        applied = asyncio.run(migrate.apply(database_url, settings.migrations_dir))
        env = child_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
        bin_dir = Path(sys.executable).parent
        processes = [
            subprocess.Popen(
                [
                    str(bin_dir / "uvicorn"),
                    "app.main:app",
                    "--host",
                    API_HOST,
                    "--port",
                    str(args.port),
                    "--no-access-log",
                ],
                env=env,
            ),
            subprocess.Popen([str(bin_dir / "arq"), "worker.WorkerSettings"], env=env),
        ]
        embedded = f" (embedded: {', '.join(started)})" if started else ""
        print(
            f"""
pagelens is starting{embedded}; {len(applied)} migration(s) applied.
  API           http://{API_HOST}:{args.port}/api/v1/scan-jobs   (OpenAPI: /openapi.json)
  API metrics   http://{API_HOST}:{args.port}/metrics
  worker        http://127.0.0.1:{settings.worker_metrics_port}/metrics (once observability is on)
  servers       {env_file}   (more workers: set -a; . {env_file}; .venv/bin/arq worker.WorkerSettings)
Scan a page:  curl -s -XPOST localhost:{args.port}/api/v1/scan-jobs -H 'content-type: application/json' \\
                -d '{{"url": "https://example.com/"}}'
Ctrl-C stops everything.
""",
            flush=True,
        )
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            while all(p.poll() is None for p in processes):
                time.sleep(0.5)
            print("a child process exited; stopping", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            _stop(processes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pagelens", description="Scan web pages and documents in the background.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(handler=cmd_migrate)
    sub.add_parser("worker", help="run one arq worker").set_defaults(handler=cmd_worker)
    run = sub.add_parser("run", help="start servers, API and a worker for local use")
    run.add_argument("--port", type=int, default=API_PORT)
    run.set_defaults(handler=cmd_run)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.handler(settings, args)
        return code
    except (ConfigError, migrate.MigrationError) as exc:
        print(f"pagelens: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
