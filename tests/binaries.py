"""Programs some tests drive for real: Debian packages that `make test` installs when run as root.

A missing one skips the test with the reason, except under CI=true, where it fails: CI must run
every test.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: CI must run this test")
    pytest.skip(reason)


def _reason(name: str, package: str | None) -> str:
    return f"{name} is not installed (Debian package {package or name}; `make test` installs it as root)"


def require(name: str, package: str | None = None) -> str:
    """The program's path; skip (or, under CI, fail) the test without it."""
    return shutil.which(name) or missing(_reason(name, package))


def optional(name: str, package: str | None = None) -> str | None:
    """The program's path, or None where the test can do without it (never under CI)."""
    path = shutil.which(name)
    if path is None and os.environ.get("CI") == "true":
        pytest.fail(f"{_reason(name, package)}: CI must run with it")
    return path
