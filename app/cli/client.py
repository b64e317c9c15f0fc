"""A small synchronous client of the pagelens HTTP API, for the `pagelens` command.

Errors come in two kinds a script can tell apart: `Refused` (the API understood and said no: an
invalid URL, an unknown scan, a scan that cannot be retried) and `Unavailable` (no answer, an
answer that is not the API's, or the API failing: unreachable, timeouts, 401/429/5xx).
"""

from __future__ import annotations

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


class Unavailable(Exception):
    """The API could not be reached or did not do its job."""


class Unreachable(Unavailable):
    """Nothing answered at the API's address (or not in time)."""


class Refused(Exception):
    """The API refused the request; the message is the problem's detail (and field errors)."""


def _problem_text(response: httpx.Response) -> str:
    try:
        problem = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if not isinstance(problem, dict):
        return f"HTTP {response.status_code}"
    detail = str(problem.get("detail") or problem.get("title") or f"HTTP {response.status_code}")
    fields = [f"{e.get('field')}: {e.get('message')}" for e in problem.get("errors") or [] if isinstance(e, dict)]
    return f"{detail} ({'; '.join(fields)})" if fields else detail


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 15.0) -> None:
        headers = {"Accept": "application/json", "User-Agent": "pagelens-cli"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def _check(self, response: httpx.Response, answer: type[Answer]) -> Answer:
        if response.status_code in REFUSALS:
            raise Refused(_problem_text(response))
        if response.status_code == 401:
            raise Unavailable("the API needs an API key: pass --api-key or set PAGELENS_API_KEY")
        if response.status_code >= 400:
            raise Unavailable(f"the API answered {response.status_code}: {_problem_text(response)}")
        try:
            return answer.model_validate_json(response.content)
        except ValidationError:
            raise Unavailable(f"{self.base_url} did not answer like a pagelens API") from None

    def request(self, method: str, path: str, answer: type[Answer], **kwargs: Any) -> Answer:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise Unreachable(f"cannot reach the API at {self.base_url} ({type(exc).__name__}: {exc})") from None
        return self._check(response, answer)

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
        with Last-Event-ID, and only failures in a row count against STREAM_RECONNECTS."""
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
                        response.read()
                        self._check(response, ScanStatus)
                        raise Unavailable(f"the event stream answered {response.status_code}")
                    failures = 0  # the API answered: a stream ending from here on is a rotation
                    for event_id, data in _events(response.iter_lines()):
                        last_id = event_id or last_id
                        try:
                            status = ScanStatus.model_validate_json(data)
                        except ValidationError:
                            raise Unavailable(f"{self.base_url} sent an event that is not a scan status") from None
                        yield status
                        if status.status in TERMINAL:
                            return
            except httpx.HTTPError as exc:
                failures += 1
                if failures > STREAM_RECONNECTS:
                    raise Unavailable(f"lost the event stream from {self.base_url} ({type(exc).__name__})") from None
                time.sleep(min(2.0 * failures, 10.0))


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
