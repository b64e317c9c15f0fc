"""Every number the API reads from a query string or a header goes through one strict parser:
Unicode digits, signs, spaces, underscores and huge values get a 4xx, never a 5xx, and are never
read as numbers.

The app runs in process (Starlette's TestClient, real PostgreSQL and Redis, a database and queue of
its own) because Hypothesis calls the test synchronously, and because only an in-process client can
hand the app header bytes that a real HTTP server would refuse before the app ever saw them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.testclient import TestClient

from app.api.params import BIGINT_MAX, InvalidNumber, ascii_integer
from app.api.span_forwarding import BrowserTraces
from app.api.state import State
from app.core import migrate
from app.core.settings import Settings

SCANS = "/api/v1/scan-jobs"
PROBLEM = "application/problem+json"
EXAMPLES = settings(
    max_examples=60, derandomize=True, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# What a hostile client puts where a number goes.
unicode_digits = st.text(st.characters(categories=["Nd", "No", "Nl"]), min_size=1, max_size=6)
signed = st.from_regex(r"\A[+-][0-9]{1,4}\Z")
spaced = st.from_regex(r"\A[ \t]{0,2}[0-9]{1,4}[ \t]{0,2}\Z")
underscored = st.from_regex(r"\A[0-9]{1,3}_[0-9]{1,3}\Z")
huge = st.one_of(st.from_regex(r"\A[1-9][0-9]{19,60}\Z"), st.integers(4300, 6000).map(lambda n: "9" * n))
plain = st.integers(min_value=0, max_value=200).map(str)
anything = st.text(st.characters(blacklist_characters="\r\n\x00"), max_size=30)
numbers = st.one_of(unicode_digits, signed, spaced, underscored, huge, plain, anything)


def accepted(raw: str, low: int, high: int) -> int | None:
    """What the parser is meant to do, written out: ASCII digits within the bounds, else nothing."""
    if raw and all("0" <= c <= "9" for c in raw) and len(raw) <= len(str(high)) and low <= int(raw) <= high:
        return int(raw)
    return None


def header_bytes(value: str) -> bytes:
    # HTTP header values are bytes; servers hand them to the app as latin-1 text.
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


@pytest.fixture(scope="module")
async def params_database(server_dsn: str, empty_database: Any, settings: Settings) -> str:
    dsn: str = await empty_database(server_dsn)
    await migrate.apply(dsn, settings.migrations_dir)
    return dsn


@pytest.fixture(scope="module")
def app_client(settings: Settings, params_database: str) -> Iterator[TestClient]:
    from app.api.main import create_app

    own = settings.with_(database_url=params_database, queue_name=f"{settings.queue_name}:params")
    with TestClient(create_app(own, configure_logging=False), raise_server_exceptions=False) as client:
        # Browser spans collected, into a list: the JSON decoding under test is the real one.
        async def keep(request: ExportTraceServiceRequest) -> None:
            forwarded.append(request)

        async def close() -> None:
            pass

        forwarded: list[ExportTraceServiceRequest] = []
        State.of_app(client.app).browser_traces = BrowserTraces(keep, close, per_minute=100_000)  # type: ignore[arg-type]
        yield client


@pytest.fixture(scope="module")
def cancelled_scan(app_client: TestClient) -> tuple[str, int]:
    """A scan in a terminal state (so its event stream ends) and its version."""
    created = app_client.post("/api/v1/documents", json={"text": "A short note about compost."})
    assert created.status_code == 202, created.text
    scan_id = created.json()["scanId"]
    assert app_client.delete(f"{SCANS}/{scan_id}").status_code == 202
    events = app_client.get(f"{SCANS}/{scan_id}/events")
    ids = [int(line[4:]) for line in events.text.splitlines() if line.startswith("id: ")]
    assert ids, events.text
    return scan_id, ids[-1]


def assert_client_error(response: Any, status: int) -> None:  # the TestClient's httpx Response
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith(PROBLEM)


@given(raw=numbers)
@example(raw="²")  # str.isdigit() says yes, int() says no: this was a 500
@example(raw="\u0663")  # Arabic-Indic three: int() reads 3
@example(raw="\uff11\uff10\uff10")  # fullwidth 100
@example(raw="9" * 5000)  # past int()'s digit limit
@example(raw="0x10")
@EXAMPLES
def test_limit(app_client: TestClient, raw: str) -> None:
    response = app_client.get(SCANS, params={"limit": raw})
    if accepted(raw, 1, 100) is None:
        assert_client_error(response, 422)
        assert response.json()["errors"] == [{"field": "limit", "message": "an integer from 1 to 100"}]
    else:
        assert response.status_code == 200, response.text
        assert len(response.json()["items"]) <= int(raw)


@given(raw=numbers)
@example(raw="²")
@example(raw="¹")
@example(raw="-5")
@example(raw="9" * 40)
@EXAMPLES
def test_content_length(app_client: TestClient, raw: str) -> None:
    body = json.dumps({"text": "compost"}).encode()
    response = app_client.post(
        "/api/v1/documents",
        content=body,
        headers={b"content-type": b"application/json", b"content-length": header_bytes(raw)},
    )
    declared = accepted(raw, 0, BIGINT_MAX)
    if declared is None:
        assert_client_error(response, 400)
    elif declared > State.of_app(app_client.app).settings.max_body_bytes:  # type: ignore[arg-type]
        assert_client_error(response, 413)
    else:
        assert response.status_code == 202, response.text


@given(raw=numbers)
@example(raw="²")
@example(raw="\u0663")
@example(raw="9" * 40)
@EXAMPLES
def test_last_event_id(app_client: TestClient, cancelled_scan: tuple[str, int], raw: str) -> None:
    scan_id, version = cancelled_scan
    response = app_client.get(f"{SCANS}/{scan_id}/events", headers={b"last-event-id": header_bytes(raw)})
    seen = accepted(raw, 0, BIGINT_MAX)
    if seen is not None and seen == version:
        assert response.status_code == 204
    else:
        # Unreadable, or from another history: the current (terminal) state again, never a number
        # made of other scripts' digits.
        assert response.status_code == 200, response.text
        assert f"id: {version}\n" in response.text


@given(raw=numbers)
@example(raw="\u0661\u0667" + "\u0660" * 18)  # Arabic-Indic digits, a plausible time
@example(raw="-1")
@example(raw="1" * 30)
@EXAMPLES
def test_otlp_json_integers(app_client: TestClient, raw: str) -> None:
    span = {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
        "name": "documentLoad",
        "kind": 1,
        "startTimeUnixNano": raw,
        "endTimeUnixNano": str(2**63),
    }
    body = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {"name": "t"}, "spans": [span]}]}]}
    response = app_client.post("/v1/traces", json=body)
    start = accepted(raw, 0, 2**64 - 1)
    if start is None or start == 0 or start > 2**63:
        assert_client_error(response, 400)
    else:
        assert response.status_code == 200, response.text


def test_scan_ids_are_ascii(app_client: TestClient, cancelled_scan: tuple[str, int]) -> None:
    scan_id, _ = cancelled_scan
    assert app_client.get(f"{SCANS}/{scan_id}/status").status_code == 200
    # The same id in Arabic-Indic digits: uuid.UUID alone would read it as this very scan.
    other_digits = scan_id.translate({ord(d): chr(0x0660 + int(d)) for d in "0123456789"})
    assert other_digits != scan_id
    for path in ("status", "events", "full"):
        assert_client_error(app_client.get(f"{SCANS}/{other_digits}/{path}"), 404)
    assert_client_error(app_client.delete(f"{SCANS}/{other_digits}"), 404)


@pytest.mark.parametrize("raw", ["²", "\u0663", "+1", "-1", " 1", "1_0", "", "1" * 40])
def test_ascii_integer_refuses(raw: str) -> None:
    with pytest.raises(InvalidNumber):
        ascii_integer(raw, low=0, high=BIGINT_MAX)


def test_ascii_integer_bounds() -> None:
    assert ascii_integer("0", low=0, high=1) == 0
    assert ascii_integer(str(BIGINT_MAX), low=0, high=BIGINT_MAX) == BIGINT_MAX
    with pytest.raises(InvalidNumber):
        ascii_integer(str(BIGINT_MAX + 1), low=0, high=BIGINT_MAX)
    with pytest.raises(InvalidNumber):
        ascii_integer("101", low=1, high=100)
