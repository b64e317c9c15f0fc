"""Every package the code imports is declared in pyproject.toml; the lock files pin every declared
package with hashes, agree with each other and with what the tests run on; torch stays out of them
(installed first, pinned, as the CPU build); the Docker image's base is pinned exactly."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"app", "worker", "observability", "tests", "bench", "migrations"}
# Kept out of the locks: the Makefile and the Dockerfile install it first, pinned (a CPU build).
UNLOCKED = {"torch"}


def imports(folders: Iterable[str]) -> dict[str, set[str]]:
    """Every absolute import of a third-party module in `folders`, with the files that make it."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    # `from opentelemetry import trace`: the module is opentelemetry.trace
                    names = [f"{node.module}.{alias.name}" for alias in node.names]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in FIRST_PARTY:
                        found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def module_file(name: str) -> Path | None:
    """The file of the deepest module in the dotted `name` (which may end in a non-module)."""
    while name:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.origin:
            return Path(spec.origin)
        name = name.rpartition(".")[0]
    return None


@cache
def top_level_owners() -> Mapping[str, list[str]]:
    return packages_distributions()


@cache
def files_of(name: str) -> frozenset[Path]:
    dist = distribution(name)
    return frozenset(Path(str(dist.locate_file(f))) for f in dist.files or ())


def owner(module: str) -> set[str]:
    """The distributions that provide `module`; in a namespace package (opentelemetry, google) the
    one whose files include the module's own file."""
    candidates = top_level_owners().get(module.split(".")[0], [])
    if len(candidates) <= 1:
        return {canonicalize_name(d) for d in candidates}
    path = module_file(module)
    return {canonicalize_name(name) for name in candidates if path in files_of(name)}


def pyproject() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime: list[str] = project["dependencies"]
    return {"runtime": runtime, "dev": runtime + project["optional-dependencies"]["dev"]}


def names(requirements: list[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


def test_every_imported_package_is_declared() -> None:
    declared = pyproject()
    problems = []
    for folders, which in ((("app", "worker", "observability"), "runtime"), (("tests", "bench"), "dev")):
        for module, files in sorted(imports(folders).items()):
            owners = owner(module)
            if not owners & names(declared[which]):
                problems.append(f"{which}: {module} ({sorted(owners) or 'not installed'}) in {sorted(files)[:3]}")
    assert problems == [], "imported but not declared in pyproject.toml"


def locked(name: str) -> dict[str, tuple[str, int]]:
    """A pip-compile lock file: each package's pinned version and how many hashes it carries."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in (ROOT / name).read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line):
            current = canonicalize_name(match[1])
            pins[current] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            pins[current] = (pins[current][0], pins[current][1] + 1)
        elif line and not line.startswith((" ", "#")):
            raise AssertionError(f"{name}: unexpected line {line!r}")
    return pins


def test_the_locks_pin_every_declared_package_with_hashes() -> None:
    declared = pyproject()
    for lock, which in (("requirements.lock", "runtime"), ("requirements-dev.lock", "dev")):
        pins = locked(lock)
        assert all(count > 0 for _, count in pins.values()), f"{lock}: a pin without hashes"
        assert not UNLOCKED & set(pins), f"{lock}: torch must stay out (a PyPI hash is the CUDA build's)"
        for requirement in map(Requirement, declared[which]):
            name = canonicalize_name(requirement.name)
            if name in UNLOCKED:
                continue
            assert name in pins, f"{name} is declared but not in {lock}: run `make lock`"
            assert requirement.specifier.contains(pins[name][0], prereleases=True), (lock, str(requirement))
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    # pagelens itself is installed with --no-build-isolation, by the locked build backend.
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for requirement in map(Requirement, build):
        name = canonicalize_name(requirement.name)
        assert name in runtime and requirement.specifier.contains(runtime[name][0]), str(requirement)
    assert {n: v for n, (v, _) in runtime.items()} == {n: dev[n][0] for n in runtime}, "the locks disagree"


def test_the_tests_run_on_the_locked_versions() -> None:
    different: dict[str, tuple[str, str | None]] = {}
    for name, (pinned, _) in locked("requirements-dev.lock").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            different[name] = (pinned, None)
            continue
        if Version(installed) != Version(pinned):
            different[name] = (pinned, installed)
    assert different == {}, "installed versions differ from the lock (pinned, installed): `make install`"


def test_torch_is_pinned_alike_everywhere_and_installed_first() -> None:
    (torch,) = [r for r in map(Requirement, pyproject()["runtime"]) if r.name == "torch"]
    pin = str(torch.specifier)
    assert pin.startswith("==")
    makefile, dockerfile = (ROOT / "Makefile").read_text(), (ROOT / "Dockerfile").read_text()
    for text in (makefile, dockerfile):
        assert text.index(f"torch{pin}") < text.index("--require-hashes"), "torch goes in before the lock"
    assert Version(version("torch")).base_version == pin[2:]


def test_the_docker_image_is_pinned_and_installs_from_the_lock() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert bases and all(re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+", b) for b in bases), bases
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "requirements-dev.lock" not in dockerfile, "the image carries no dev tools"
