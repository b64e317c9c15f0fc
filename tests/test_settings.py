"""Settings: every field is read from its own environment variable, has one default, and is listed
in the README's configuration table."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from app.core.settings import ConfigError, Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def configuration_table() -> str:
    text = README.read_text()
    return text[text.index("## Configuration") :].split("\n## ", 1)[0]


def test_every_field_has_a_variable_and_a_readme_row() -> None:
    variables = Settings.variables()
    assert set(variables) == {f.name for f in fields(Settings)}
    assert len(set(variables.values())) == len(variables), "one variable per field"
    rows = [line for line in configuration_table().splitlines() if line.startswith("| `")]
    listed = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.split("|")[1])}
    assert set(variables.values()) - listed == set(), "variables missing from the README's table"
    assert listed - set(variables.values()) == set(), "README rows for variables nothing reads"


def test_defaults_are_the_same_from_the_environment_and_the_constructor() -> None:
    assert Settings.from_env({}) == Settings()
    blank = {name: "  " for name in Settings.variables().values() if name != "PAGELENS_TRACE_URL_TEMPLATE"}
    assert Settings.from_env(blank) == Settings(), "a blank variable keeps the default"


def other_value(default: Any, annotation: str) -> tuple[str, Any]:
    """A value for the variable unlike the default, and what the field should then hold."""
    if annotation == "bool":
        return ("false", False) if default else ("true", True)
    if annotation in ("int", "int | None"):
        value = (default or 0) + 4099
        return str(value), value
    if annotation == "float":
        return "7.25", 7.25
    if annotation == "tuple[str, ...]":
        return "a, b", ("a", "b")
    if annotation == "frozenset[str]":
        return "A.example,b.example:8080", frozenset({"a.example", "b.example:8080"})
    if annotation == "frozenset[int]":
        return "81,8081", frozenset({81, 8081})
    if annotation == "Path":
        return "/srv/elsewhere", Path("/srv/elsewhere")
    return "other-value", "other-value"


@pytest.mark.parametrize("field", fields(Settings), ids=lambda f: f.name)
def test_each_variable_sets_its_field(field: Any) -> None:
    name = Settings.variables()[field.name]
    raw, expected = other_value(field.default, str(field.type))
    if field.name == "log_level":
        expected = raw.upper()
    if field.name == "sse_tenant_share":  # a share: at most 1
        raw, expected = "0.25", 0.25
    settings = Settings.from_env({name: raw})
    assert getattr(settings, field.name) == expected != field.default
    assert settings.with_(**{field.name: field.default}) == Settings(), "nothing else changed"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAGELENS_MAX_JOBS": "ten"}, "PAGELENS_MAX_JOBS must be an integer"),
        ({"PAGELENS_MAX_JOBS": "0"}, "PAGELENS_MAX_JOBS must be >= 1"),
        ({"PAGELENS_MAX_BODY_BYTES": "10"}, "PAGELENS_MAX_BODY_BYTES must be >= 1024"),
        ({"PAGELENS_JOB_TIMEOUT": "-1"}, "PAGELENS_JOB_TIMEOUT must be > 0"),
        ({"PAGELENS_POLL_DELAY": "soon"}, "PAGELENS_POLL_DELAY must be a number"),
        ({"ENABLE_METRICS": "maybe"}, "ENABLE_METRICS must be true or false"),
        ({"PAGELENS_FETCH_ALLOWED_PORTS": "80,http"}, "PAGELENS_FETCH_ALLOWED_PORTS must be a comma list"),
        ({"PAGELENS_SSE_TENANT_SHARE": "1.5"}, "PAGELENS_SSE_TENANT_SHARE must be a share between 0 and 1"),
    ],
)
def test_bad_values_are_refused_by_name(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_special_cases() -> None:
    assert Settings.from_env({"PAGELENS_API_METRICS_PORT": "0"}).api_metrics_port is None
    assert Settings.from_env({"PAGELENS_API_URL": "http://api:8000/"}).api_url == "http://api:8000"
    assert Settings.from_env({"PAGELENS_TRACE_URL_TEMPLATE": ""}).trace_url_template == "", "empty: no link"
