"""A small synchronous client of the pagelens HTTP API, for the `pagelens` command.

Errors come in two kinds a script can tell apart: `Refused` (the API understood and said no: an
invalid URL, an unknown scan, a scan that cannot be retried) and `Unavailable` (no answer, an
answer that is not the API's, or the API failing: unreachable, timeouts, 401/429/5xx).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError

from app.core.models import TERMINAL
from app.core.report import Accepted, Report, ScanList, ScanStatus, Wire
from app.core.types import JSONDict

Answer = TypeVar("Answer", bound=Wire)

SCANS = "/api/v1/scan-jobs"
# Statuses the API uses for "your request was wrong"; anything else is the service's problem.
REFUSALS = frozenset({400, 404, 409, 413, 415, 422})
STREAM_RECONNECTS = 20
EMPTY_STREAM_PAUSE = 0.25  # seconds before resuming a stream that ended without an event
# What the command reads of one answer, and of one line of the event stream: a full report is tens
# of kilobytes; an answer past these is not the API's, and must not take the machine's memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
MAX_EVENT_LINE = 1024 * 1024
# C0 controls but tab and newline, DEL and the C1 controls: what a terminal acts on (colours,
# cursor moves, window titles, clipboard writes, hyperlinks). A scanned page's text reaches the
# terminal through the report, and a hostile server could send anything.
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character a terminal would act on shown as U+FFFD."""
    return _CONTROLS.sub("\ufffd", text)


def _printable(value: Any) -> Any:
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_printable(each) for each in value]
    if isinstance(value, dict):
        return {key: _printable(each) for key, each in value.items()}
    return value


class Unavailable(Exception):
    """The API could not be reached or did not do its job."""


class Unreachable(Unavailable):
    """Nothing answered at the API's address (or not in time)."""


class Refused(Exception):
    """The API refused the request; the message is the problem's detail (and field errors)."""


def _problem_text(status_code: int, body: bytes) -> str:
    try:
        problem = json.loads(body)
    except ValueError:
        return f"HTTP {status_code}"
    if not isinstance(problem, dict):
        return f"HTTP {status_code}"
    detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status_code}")
    fields = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors") or [] if isinstance(e, dict)]
    return printable(f"{detail} ({'; '.join(fields)})" if fields else detail)


def _read(response: httpx.Response) -> bytes:
    """The answer's body, at most MAX_ANSWER_BYTES of it (Unavailable past that)."""
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            raise Unavailable(f"the answer is larger than {MAX_ANSWER_BYTES} bytes: not a pagelens API")
    return bytes(body)


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 15.0) -> None:
        headers = {"Accept": "application/json", "User-Agent": "pagelens-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def _check(self, status_code: int, body: bytes, answer: type[Answer]) -> Answer:
        if status_code in REFUSALS:
            raise Refused(_problem_text(status_code, body))
        if status_code == 401:
            raise Unavailable("the API needs an API key: pass --api-key or set PAGELENS_API_KEY")
        if status_code >= 400:
            raise Unavailable(f"the API answered {status_code}: {_problem_text(status_code, body)}")
        return self._parse(body, answer)

    def _parse(self, data: bytes | str, answer: type[Answer]) -> Answer:
        """The answer as its model, every string in it printable (see `printable`)."""
        try:
            return answer.model_validate(_printable(json.loads(data)))
        except (ValueError, ValidationError, RecursionError):
            raise Unavailable(f"{self.base_url} did not answer like a pagelens API") from None

    def request(self, method: str, path: str, answer: type[Answer], **kwargs: Any) -> Answer:
        try:
            with self.http.stream(method, path, **kwargs) as response:
                return self._check(response.status_code, _read(response), answer)
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the API at {self.base_url} ({type(exc).__name__}: {exc})") from None

    def create_scan(self, url: str, top_n: int) -> Accepted:
        return self.request("POST", SCANS, Accepted, json={"url": url, "options": {"topN": top_n}})

    def create_document(self, text: str, title: str | None, top_n: int) -> Accepted:
        body: JSONDict = {"text": text, "options": {"topN": top_n}}
        if title:
            body["title"] = title
        return self.request("POST", "/api/v1/documents", Accepted, json=body)

    def status(self, scan_id: str) -> ScanStatus:
        return self.request("GET", f"{SCANS}/{scan_id}/status", ScanStatus)

    def report(self, scan_id: uuid.UUID) -> Report:
        return self.request("GET", f"{SCANS}/{scan_id}/full", Report)

    def retry(self, scan_id: str) -> Accepted:
        return self.request("POST", f"{SCANS}/{scan_id}/retry", Accepted)

    def scans(self, status: str | None, limit: int) -> ScanList:
        params: dict[str, str | int] = {"limit": limit}
        if status:
            # The API takes the names as written (FAILED); the command line is forgiving of case.
            params["status"] = status.upper() if status.isascii() else status
        return self.request("GET", SCANS, ScanList, params=params)

    def follow(self, scan_id: str) -> Iterator[ScanStatus]:
        """Each status change (the current state first) until a terminal state, over the event
        stream. The server ends a stream after a while and a network can drop it: both are resumed
        with Last-Event-ID, and only failures in a row count against STREAM_RECONNECTS. A stream
        that ended without an event is resumed after a pause, so that a server ending every stream
        at once does not get a storm of requests."""
        last_id = ""
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                with self.http.stream(
                    "GET", f"{SCANS}/{scan_id}/events", headers=headers, timeout=httpx.Timeout(15.0, read=60.0)
                ) as response:
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        self._check(response.status_code, _read(response), ScanStatus)
                        raise Unavailable(f"the event stream answered {response.status_code}")
                    failures = 0  # the API answered: a stream ending from here on is a rotation
                    events = 0
                    for event_id, data in _events(_lines(response.iter_bytes())):
                        last_id = event_id or last_id
                        status = self._parse(data, ScanStatus)
                        events += 1
                        yield status
                        if status.status in TERMINAL:
                            return
                if events == 0:
                    time.sleep(EMPTY_STREAM_PAUSE)
            except httpx.HTTPError as exc:
                failures += 1
                if failures > STREAM_RECONNECTS:
                    raise Unavailable(f"lost the event stream from {self.base_url} ({type(exc).__name__})") from None
                time.sleep(min(2.0 * failures, 10.0))


_EOL = re.compile(rb"\r\n|\n|\r")


def _lines(chunks: Iterator[bytes]) -> Iterator[str]:
    """The stream's lines (CR LF, LF or CR ends one), each at most MAX_EVENT_LINE bytes."""
    buffer = b""
    for chunk in chunks:
        buffer += chunk
        while (end := _EOL.search(buffer)) and not (end.group() == b"\r" and end.end() == len(buffer)):
            # (A CR that ends the buffer may be the first half of a CR LF: it waits for the next byte.)
            yield buffer[: end.start()].decode("utf-8", errors="replace")
            buffer = buffer[end.end() :]
        if len(buffer) > MAX_EVENT_LINE:
            raise Unavailable(f"an event stream line is longer than {MAX_EVENT_LINE} bytes: not a pagelens API")
    if buffer:
        yield buffer.removesuffix(b"\r").decode("utf-8", errors="replace")


def _events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(id, data) of each server-sent event with data; comments and other fields are skipped."""
    event_id, data = "", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event_id, "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        elif line.startswith("id:"):
            event_id = line[3:].strip()
