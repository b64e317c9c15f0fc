"""The layering (docs/architecture.md) holds, and the check that guards it can fail.

`make lint` runs import-linter with the contract in pyproject.toml; these tests run the same contract on
the real tree and on a small tree that breaks it, so a contract that silently checks nothing is caught.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
SHIPPED = ("app", "worker", "observability")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", "pyproject.toml"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"},
    )


def test_the_tree_keeps_the_layers() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def _tree(tmp_path: Path, imports: dict[str, str]) -> Path:
    """A miniature of the real layout, with one import per module given in `imports`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = ", ".join(f'"{layer}"' for layer in config["contracts"][0]["layers"])
    (tmp_path / "pyproject.toml").write_text(
        "[tool.importlinter]\n"
        'root_packages = ["app", "worker", "observability"]\n\n'
        "[[tool.importlinter.contracts]]\n"
        'name = "layers"\ntype = "layers"\n'
        f"layers = [{layers}]\n"
    )
    for package in ("app", "app/api", "app/cli", "app/core", "worker", "observability"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    for module in (
        "app/main",
        "app/api/routes",
        "app/cli/client",
        "app/core/scans",
        "worker/pipeline",
        "observability/metrics",
    ):
        source = imports.get(module.replace("/", "."), "")
        (tmp_path / f"{module}.py").write_text(source + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "statement"),
    [
        ("observability.metrics", "import app.core.scans"),  # observability knows nothing of pagelens
        ("app.core.scans", "import worker.pipeline"),  # the core imports no face
        ("app.core.scans", "import app.api.routes"),
        ("worker.pipeline", "import app.api.routes"),  # faces are independent
        ("app.cli.client", "import worker.pipeline"),
        ("app.api.routes", "import app.cli.client"),
    ],
)
def test_a_back_arrow_breaks_the_check(tmp_path: Path, module: str, statement: str) -> None:
    downward = {"app.api.routes": "import app.core.scans", "app.core.scans": "import observability.metrics"}
    downward[module] = statement
    result = _lint(_tree(tmp_path, downward))
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout


def test_downward_imports_pass_the_check(tmp_path: Path) -> None:
    result = _lint(
        _tree(
            tmp_path,
            {
                "app.main": "import app.api.routes",
                "app.api.routes": "import app.core.scans",
                "worker.pipeline": "import app.core.scans\nimport observability.metrics",
                "app.core.scans": "import observability.metrics",
            },
        )
    )
    assert result.returncode == 0, result.stdout + result.stderr


_INTROSPECTION = re.compile(r"\b(cr_frame|gi_frame|f_locals|f_back|_getframe|currentframe)\b")


def test_no_code_reads_frames() -> None:
    """Libraries are extended through their public seams, never through a running frame's locals."""
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in SHIPPED
        for path in (ROOT / package).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if _INTROSPECTION.search(line)
    ]
    assert found == [], found
