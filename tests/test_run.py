"""`make run`'s command end to end: embedded servers, migrations, API and a worker, then Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli.embedded import free_port, port_answers
from tests.site import Site

pytestmark = pytest.mark.slow


async def test_pagelens_run_with_embedded_servers(tmp_path: Path, site: Site) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {
        "PAGELENS_DATA_DIR": str(tmp_path / "data"),
        "PAGELENS_FETCH_ALLOW_HOSTS": f"127.0.0.1:{site.port}",
        "PAGELENS_QUEUE": "pagelens:run-test",
    }
    # tmp_path must be reachable by the unprivileged user pgserver runs PostgreSQL as under root.
    for parent in (tmp_path, *tmp_path.parents):
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o005)
    process = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "run", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(600):  # bounded: up to ~120 s for first-time initdb and model load
                if process.poll() is not None:
                    break
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.2)
            assert process.poll() is None, "pagelens run exited early"
            created = await client.post("/api/v1/scan-jobs", json={"url": site.url("/pages/article.html")})
            assert created.status_code == 202
            status_url = created.json()["statusUrl"]
            status = {}
            for _ in range(600):
                status = (await client.get(status_url)).json()
                if status["status"] in {"FULL_READY", "FAILED"}:
                    break
                await asyncio.sleep(0.2)
            assert status["status"] == "FULL_READY", status
        env_file = (tmp_path / "data" / "env").read_text()
        assert "DATABASE_URL=postgresql://" in env_file and "REDIS_URL=redis://127.0.0.1:" in env_file
        redis_port = int(env_file.split("REDIS_URL=redis://127.0.0.1:")[1].split("/")[0])
        assert port_answers("127.0.0.1", redis_port)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            output = process.communicate(timeout=60)[0].decode(errors="replace")
        except subprocess.TimeoutExpired:
            process.kill()
            output = process.communicate()[0].decode(errors="replace")
        print(output[-5000:])  # pytest shows it when the test fails
    assert process.returncode == 0, output[-3000:]
    assert "pagelens is starting (embedded: postgres, redis)" in output
    assert not port_answers("127.0.0.1", port), "the API stopped"
    assert not port_answers("127.0.0.1", redis_port), "the embedded Redis stopped"
