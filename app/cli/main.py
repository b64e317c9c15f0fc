"""The `pagelens` command: run pagelens locally, and use a running one from the shell.

Exit codes, for scripts:
  0  done: the scan is FULL_READY (with --wait), or the command did what it was asked
  1  the scan FAILED or was CANCELLED; for `pagelens run`, a child kept crashing
  2  usage: bad arguments or settings, or the API refused the request (invalid URL, unknown scan…)
  3  the API is unreachable or failing (connection refused, timeout, 401, 429, 5xx)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from rich.console import Console

from app.cli import keys
from app.cli.client import Client, Refused, Unavailable, Unreachable
from app.cli.report import ProgressView, render_list, render_report, render_status
from app.cli.run import API_HOST, API_PORT, cmd_run, port_number, worker_command, worker_count
from app.core import migrate
from app.core.models import TERMINAL
from app.core.report import Accepted, ScanStatus, Wire
from app.core.settings import ConfigError, Settings

DONE, SCAN_FAILED, USAGE, UNAVAILABLE = 0, 1, 2, 3


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    applied = asyncio.run(migrate.apply(settings.require_database_url(), settings.migrations_dir))
    print(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else ", database is up to date")
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    # exec, not a child process: SIGTERM and Ctrl-C reach the worker itself, which drains gracefully.
    # (A module run, not an import: the CLI must not import the worker.)
    flags = [flag for flag, on in (("--burst", args.burst), ("--check", args.check)) if on]
    command = [*worker_command(), *flags]
    os.execv(command[0], command)  # noqa: S606 (fixed argv)


# --- a client of a running API ----------------------------------------------------------------


def _client(settings: Settings, args: argparse.Namespace) -> Client:
    return Client((args.api or settings.api_url).rstrip("/"), args.api_key or settings.api_key)


def _outcome(status: ScanStatus) -> int:
    return SCAN_FAILED if status.status in ("FAILED", "CANCELLED") else DONE


def _print_json(answer: Wire) -> None:
    print(json.dumps(answer.to_json(), indent=2, ensure_ascii=False))


def _finish(client: Client, status: ScanStatus, args: argparse.Namespace) -> int:
    """Print the scan as it now is: the report once FULL_READY, else its status."""
    out = Console()
    report = client.report(status.scan_id) if status.status == "FULL_READY" else None
    if args.json:
        _print_json(report if report is not None else status)
    elif report is not None:
        render_report(out, report, status)
    else:
        render_status(out, status)
    return _outcome(status)


def _wait(client: Client, scan_id: str, args: argparse.Namespace) -> int:
    status = client.status(scan_id)
    if status.status not in TERMINAL:
        with ProgressView(Console(stderr=True)).running(scan_id) as view:
            for status in client.follow(scan_id):
                view.update(status)
        if status.status not in TERMINAL:  # the stream ended without showing the end (a 204)
            status = client.status(scan_id)
    return _finish(client, status, args)


def _accepted(client: Client, accepted: Accepted, args: argparse.Namespace) -> int:
    scan_id = str(accepted.scan_id)
    if args.wait:
        return _wait(client, scan_id, args)
    if args.json:
        _print_json(accepted)
    else:
        print(f"scan {scan_id} {accepted.status}")
        print(f"  follow it:  pagelens status {scan_id} --wait")
        print(f"  status:     {client.base_url}{accepted.status_url}")
    return DONE


def cmd_scan(settings: Settings, args: argparse.Namespace) -> int:
    client = _client(settings, args)
    if args.text is not None:
        text = sys.stdin.read() if args.text == "-" else Path(args.text).read_text(encoding="utf-8")
        return _accepted(client, client.create_document(text, args.title, args.top_n), args)
    if not args.url:
        raise Refused("give a URL to scan, or --text FILE (- for standard input)")
    return _accepted(client, client.create_scan(args.url, args.top_n), args)


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    client = _client(settings, args)
    if args.wait:
        return _wait(client, args.scan_id, args)
    status = client.status(args.scan_id)
    if args.json:
        _print_json(status)
    else:
        render_status(Console(), status)
    return _outcome(status)


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    page = _client(settings, args).scans(args.status, args.limit)
    if args.json:
        _print_json(page)
    else:
        render_list(Console(), page.items)
    return DONE


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    client = _client(settings, args)
    return _accepted(client, client.retry(args.scan_id), args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pagelens",
        description="Scan web pages and documents in the background.",
        epilog="exit codes: 0 done, 1 scan failed or cancelled, 2 usage or refused, 3 API unreachable or failing",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(handler=cmd_migrate)
    worker = sub.add_parser("worker", help="run one worker")
    worker.add_argument("--burst", action="store_true", help="run the queued jobs, then exit")
    worker.add_argument("--check", action="store_true", help="exit 0 when a worker of the queue is alive, else 1")
    worker.set_defaults(handler=cmd_worker)
    run = sub.add_parser("run", help="start servers, the API and workers for local use, restarting any that crash")
    run.add_argument("--port", type=port_number, default=API_PORT, help=f"the API's port (default {API_PORT})")
    run.add_argument("--workers", type=worker_count, default=1, metavar="N", help="how many workers (default 1)")
    run.set_defaults(handler=cmd_run)

    api = argparse.ArgumentParser(add_help=False)
    api.add_argument(
        "--api",
        metavar="URL",
        help=f"the API to talk to (default: PAGELENS_API_URL, else http://{API_HOST}:{API_PORT})",
    )
    api.add_argument("--api-key", metavar="KEY", help="API key (default: PAGELENS_API_KEY)")
    api.add_argument("--json", action="store_true", help="print JSON instead of text")
    waits = argparse.ArgumentParser(add_help=False)
    waits.add_argument("--wait", action="store_true", help="show live progress until the scan ends, then the report")

    scan = sub.add_parser("scan", parents=[api, waits], help="scan a URL (or a text with --text)")
    scan.add_argument("url", nargs="?", help="the page to scan")
    scan.add_argument("--text", metavar="FILE", help="scan the text of FILE instead (- reads standard input)")
    scan.add_argument("--title", help="the text's title")
    scan.add_argument("--top-n", type=int, default=10, metavar="N", help="keyphrases to extract (1-30)")
    scan.set_defaults(handler=cmd_scan)
    status = sub.add_parser("status", parents=[api, waits], help="show a scan's status (or its report once done)")
    status.add_argument("scan_id", metavar="ID")
    status.set_defaults(handler=cmd_status)
    listing = sub.add_parser("list", parents=[api], help="list recent scans, newest first")
    listing.add_argument("--status", help="only scans in this status (e.g. FAILED)")
    listing.add_argument("--limit", type=int, default=20, help="how many (1-100)")
    listing.set_defaults(handler=cmd_list)
    retry = sub.add_parser("retry", parents=[api, waits], help="replay a FAILED scan")
    retry.add_argument("scan_id", metavar="ID")
    retry.set_defaults(handler=cmd_retry)
    keys.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)  # exits with 2 on bad arguments
    try:
        settings = Settings.from_env()
        code: int = args.handler(settings, args)
        return code
    except (ConfigError, migrate.MigrationError, keys.KeyCommandError, Refused, OSError) as exc:
        print(f"pagelens: {exc}", file=sys.stderr)
        return USAGE
    except Unavailable as exc:
        print(f"pagelens: {exc}", file=sys.stderr)
        if isinstance(exc, Unreachable):
            print("  start it with `make run`, or point --api / PAGELENS_API_URL at a running server", file=sys.stderr)
        return UNAVAILABLE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
