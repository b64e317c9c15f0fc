"""Schemathesis against the real API: requests generated from its OpenAPI schema, valid and invalid,
must never get a 5xx.

The API runs in a thread of its own (uvicorn, real PostgreSQL and Redis, a database and queue of
its own that no worker reads) because schemathesis sends requests synchronously. Bounded and
repeatable: a fixed number of examples per operation, derandomized.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import hypothesis
import pytest
import schemathesis
import uvicorn
from schemathesis.checks import not_a_server_error

from app import openapi
from app.embedded import free_port
from app.settings import Settings

MAX_EXAMPLES = 60
START_POLLS = 400  # x 0.025 s

SCHEMA = schemathesis.openapi.from_dict(openapi.document())


@pytest.fixture(scope="module")
def base_url(settings: Settings, schemathesis_database: str) -> Iterator[str]:
    from app.main import create_app

    own = settings.with_(database_url=schemathesis_database, queue_name=f"{settings.queue_name}:schemathesis")
    port = free_port()
    config = uvicorn.Config(
        create_app(own, configure_logging=False), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="schemathesis-api")
    thread.start()
    try:
        for _ in range(START_POLLS):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.025)
        assert server.started, "API did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
async def schemathesis_database(migrated_database: object) -> str:
    dsn: str = await migrated_database()  # type: ignore[operator]
    return dsn


def test_the_schema_tested_is_the_one_served(base_url: str) -> None:
    assert httpx.get(f"{base_url}/openapi.json").json() == openapi.document()


@SCHEMA.parametrize()
@hypothesis.settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_no_request_gets_a_server_error(case: schemathesis.Case[Any], base_url: str) -> None:
    response = case.call(base_url=base_url, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
