"""GET / and its assets, and the committed bundle against its sources (no browser needed here).

The bundle in app/static/ is built by web/build.sh, which writes manifest.json: hashes of every
input (sources, lockfile, build script) and of every output. The staleness test recomputes both
here, so editing a source without rebuilding fails everywhere, Node.js or not. Where npm is
installed, another test rebuilds into a temporary directory and compares the bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from app.api.routes.web import ASSETS, STATIC_DIR, manifest
from app.core.settings import ROOT, Settings
from tests import binaries
from tests.conftest import serve_api

WEB = ROOT / "web"
BUILD_TIMEOUT = 300
TRACEPARENT = re.compile(r'<meta name="traceparent" content="00-([0-9a-f]{32})-[0-9a-f]{16}-0[01]">')


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_inputs() -> dict[str, str]:
    """What web/build.sh hashes as its inputs, recomputed from the files as they are now."""
    fixed = ["web/build.sh", "web/manifest.mjs", "web/package.json", "web/package-lock.json"]
    sources = sorted(f"web/src/{p.name}" for p in (WEB / "src").iterdir() if p.is_file())
    return {path: sha256(ROOT / path) for path in fixed + sources}


def test_the_committed_bundle_is_built_from_the_committed_sources() -> None:
    recorded = manifest()
    stale = sorted(
        set(build_inputs().items()) ^ set(recorded["inputs"].items()),
    )
    assert not stale, (
        "app/static/ is stale: web/ changed since the bundle was built. Run `make web` (web/build.sh) "
        f"and commit app/static/. Differences: {stale}"
    )
    for asset in ASSETS:
        assert recorded["outputs"][asset] == sha256(STATIC_DIR / asset), f"app/static/{asset} was edited by hand"


@pytest.mark.slow
def test_rebuilding_from_the_lockfile_gives_the_same_bytes(tmp_path: Path) -> None:
    if not (shutil.which("npm") and shutil.which("node")):
        binaries.missing("node/npm are not installed: the bundle is checked against its manifest only")
    source = tmp_path / "web"
    shutil.copytree(WEB, source, ignore=shutil.ignore_patterns("node_modules"))
    out = tmp_path / "static"
    out.mkdir()
    result = subprocess.run(
        ["sh", str(source / "build.sh"), str(out)], capture_output=True, text=True, timeout=BUILD_TIMEOUT
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (*ASSETS, "manifest.json"):
        assert (out / name).read_bytes() == (STATIC_DIR / name).read_bytes(), f"{name} differs when rebuilt"


async def test_the_page_and_its_assets(settings: Settings) -> None:
    api_settings = settings.with_(trace_url_template="https://grafana.example/explore?x={trace_id}&y=</script>")
    async with serve_api(api_settings) as base, httpx.AsyncClient(base_url=base) as client:
        page = await client.get("/", headers={"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"})
        assets = {name: await client.get(f"/static/{name}") for name in ASSETS}
        missing = await client.get("/static/nope.js")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"

    html = page.text
    # The settings the script reads; "<" escaped so nothing can close the script element early.
    raw = html.split('<script id="pagelens-config" type="application/json">', 1)[1].split("</script>", 1)[0]
    assert "</" not in raw
    config = json.loads(raw)
    assert config["traceUrlTemplate"] == "https://grafana.example/explore?x={trace_id}&y=</script>"
    assert config["browserTraces"] is False  # nowhere to send them in this test session
    # Document-load spans join the request's trace.
    match = TRACEPARENT.search(html)
    assert match and match.group(1) == "ab" * 16, html[:600]
    # Assets are linked with their content hash, so a new build is never served from a stale cache.
    outputs = manifest()["outputs"]
    for name, response in assets.items():
        assert f'"/static/{name}?v={outputs[name][:16]}"' in html
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == outputs[name]
    assert assets["app.js"].headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript")
    assert assets["app.css"].headers["content-type"].startswith("text/css")
    assert missing.status_code == 404


async def test_openapi_documents_the_page_the_stream_and_browser_traces(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    events = paths["/api/v1/scan-jobs/{scanId}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {"204", "404", "429"} <= events["responses"].keys()
    assert "/" in paths
    assert {"application/json", "application/x-protobuf"} == set(paths["/v1/traces"]["post"]["requestBody"]["content"])
