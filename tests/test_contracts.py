"""The typed contract end to end: what the worker builds is what the store holds, what the API serves
and what the OpenAPI document describes, field for field.

Real API, PostgreSQL, Redis and arq worker; PSI and the LLM are the local fakes, so every section of
the report (lab metrics, PSI with field data, keyphrases, rule and LLM insights) is filled in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import jsonschema_rs
import pytest
from arq.worker import Worker
from pydantic import BaseModel

from app.api import openapi
from app.api.problems import ProblemDetails
from app.core import scans
from app.core.keys import DEFAULT_TENANT
from app.core.report import Findings, Report, ScanStatus, Teaser, TeaserResponse
from app.core.settings import Settings
from observability.sampler import STATES
from tests.fakes import serve_fake_llm, serve_fake_psi
from tests.site import Site

SCANS = "/api/v1/scan-jobs"
DOCUMENT = openapi.document()


def conforms(body: Any, component: str) -> None:
    """`body` is valid against the served document's schema of `component`."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": DOCUMENT["components"]}
    errors = [str(e) for e in jsonschema_rs.validator_for(schema).iter_errors(body)]
    assert errors == [], errors


def same_bytes(response: httpx.Response, model: type[BaseModel]) -> None:
    """The served bytes are exactly the model's JSON: reading and writing it again changes nothing."""
    again = model.model_validate_json(response.content).model_dump(mode="json")
    assert response.content == json.dumps(again, separators=(",", ":"), ensure_ascii=False).encode()


async def scan_through(
    client: httpx.AsyncClient, make_worker: Callable[..., Worker], settings: Settings, body: Any
) -> str:
    accepted = await client.post(SCANS if "url" in body else "/api/v1/documents", json=body)
    assert accepted.status_code == 202, accepted.text
    conforms(accepted.json(), "Accepted")
    await make_worker(settings).main()
    scan_id: str = accepted.json()["scanId"]
    return scan_id


async def served(client: httpx.AsyncClient, scan_id: str) -> dict[str, Any]:
    """Status, teaser and report of a finished scan, each checked against its schema and model."""
    answers = {}
    reads: list[tuple[str, str, type[BaseModel]]] = [
        ("status", "ScanStatus", ScanStatus),
        ("teaser", "TeaserResponse", TeaserResponse),
        ("full", "Report", Report),
    ]
    for path, component, model in reads:
        response = await client.get(f"{SCANS}/{scan_id}/{path}")
        assert response.status_code == 200, response.text
        conforms(response.json(), component)
        same_bytes(response, model)
        answers[path] = response.json()
    return answers


async def test_a_url_scan_is_the_same_report_in_store_api_and_schema(
    client: httpx.AsyncClient, site: Site, make_worker: Callable[..., Worker], settings: Settings, pool: asyncpg.Pool
) -> None:
    with serve_fake_psi() as psi, serve_fake_llm() as llm:
        # One insight the model accepts, and one per way of breaking it: only the first is stored.
        good = {"severity": "low", "category": "seo", "message": "Name the city in the title."}
        bad = [{**good, "severity": "urgent"}, {**good, "category": "mood"}, {**good, "message": 7}, "text"]
        llm.set_content(json.dumps({"insights": [good, *bad]}))
        configured = settings.with_(psi_api_key="k", psi_base_url=psi.base_url, llm_base_url=llm.base_url)
        scan_id = await scan_through(client, make_worker, configured, {"url": site.url("/pages/article.html")})
    answers = await served(client, scan_id)
    report = Report.model_validate(answers["full"])
    assert report.status == "FULL_READY" and report.teaser == Teaser.model_validate(answers["teaser"]["teaser"])
    assert report.performance is not None and report.performance.psi is not None
    assert report.performance.psi.field_data is not None and report.performance.html_bytes > 0
    assert report.keyphrases and report.teaser.headings and report.teaser.word_count > 0
    assert [(i.source, i.message) for i in report.insights if i.source == "llm"] == [("llm", good["message"])]
    assert {i.source for i in report.insights} == {"rules", "llm"}

    row = await scans.get(pool, uuid.UUID(scan_id), DEFAULT_TENANT)
    assert row is not None
    # The store holds exactly what the models write: reading it back into them and out again is a no-op.
    assert Findings.model_validate(row["report"]).to_json() == row["report"]
    assert Teaser.model_validate(row["teaser"]).to_json() == row["teaser"] == answers["teaser"]["teaser"]
    assert Report.from_row(row).to_json() == answers["full"]


async def test_a_document_scan_keeps_every_field_with_nulls(
    client: httpx.AsyncClient, make_worker: Callable[..., Worker], settings: Settings
) -> None:
    text = "Compost needs greens and browns in equal measure. " * 20
    scan_id = await scan_through(client, make_worker, settings, {"text": text, "title": "Notes"})
    full = (await served(client, scan_id))["full"]
    assert full["performance"] is None
    teaser = full["teaser"]
    assert set(teaser) == set(DOCUMENT["components"]["schemas"]["Teaser"]["properties"])
    assert (teaser["url"], teaser["canonical"], teaser["headings"], teaser["title"]) == (None, None, [], "Notes")


async def test_problems_conform_to_the_problem_schema(client: httpx.AsyncClient) -> None:
    missing = await client.get(f"{SCANS}/{uuid.uuid4()}/full")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/problem+json"
    conforms(missing.json(), "ProblemDetails")
    invalid = await client.post(SCANS, json={"url": "https://example.com/", "options": {"psi": 0}})
    assert invalid.status_code == 422
    conforms(invalid.json(), "ProblemDetails")
    assert [e["field"] for e in invalid.json()["errors"]] == ["options.psi"]


def test_every_api_operation_has_an_id_security_and_problem_answers() -> None:
    operations = [(path, op) for path, item in DOCUMENT["paths"].items() for op in item.values()]
    ids = [op["operationId"] for _, op in operations]
    assert len(ids) == len(set(ids)) == len(openapi.OPERATIONS)
    assert DOCUMENT["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": DOCUMENT["components"]["securitySchemes"]["bearer"]["description"],
    }
    problem = {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}
    for path, op in operations:
        if not path.startswith("/api/"):
            continue
        assert {"bearer": []} in op["security"], path
        wanted = {"401", "429", "431", "503"} | ({"400", "413", "415", "422"} if "requestBody" in op else set())
        wanted |= {"404"} if "{scanId}" in path else set()
        assert wanted <= set(op["responses"]), (path, sorted(op["responses"]))
        for code, answer in op["responses"].items():
            if code.startswith(("4", "5")):
                assert answer["content"] == {"application/problem+json": problem}, (path, code)
    scan = DOCUMENT["paths"][f"{SCANS}/{{scanId}}"]
    assert {"404", "409"} <= set(scan["delete"]["responses"])
    for path in ("teaser", "full", "retry"):
        item = DOCUMENT["paths"][f"{SCANS}/{{scanId}}/{path}"]
        assert "409" in next(iter(item.values()))["responses"]


@pytest.mark.parametrize("name", ["TeaserResponse", "Report", "Teaser", "Performance", "Psi", "Insight"])
def test_teaser_and_report_are_real_object_schemas(name: str) -> None:
    schema = DOCUMENT["components"]["schemas"][name]
    assert schema["type"] == "object" and schema["properties"]
    # Every field is in every answer (null when unknown), so every field is required.
    assert set(schema["required"]) == set(schema["properties"])


def test_no_schema_is_an_untyped_object() -> None:
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            assert node != {"type": "object"}, "an object schema without properties"
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(DOCUMENT["components"])
    for item in DOCUMENT["paths"].values():
        for op in item.values():
            walk(op["responses"])


def test_queue_depth_model_has_every_sampler_state_and_problems_list_their_extras() -> None:
    assert set(STATES) <= set(DOCUMENT["components"]["schemas"]["QueueDepth"]["required"])
    assert {"scanId", "scanStatus", "error", "errors"} <= set(
        ProblemDetails.model_json_schema(by_alias=True)["properties"]
    )
