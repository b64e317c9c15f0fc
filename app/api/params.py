"""Numbers from query strings, headers and paths: one strict parser for all of them.

Python's `int()` takes far more than a client should send: Unicode digits ("٣" is 3), superscripts
that `str.isdigit()` accepts but `int()` refuses ("²"), signs, surrounding spaces, underscores, and
strings of thousands of digits (which then raise past `sys.get_int_max_str_digits()`). Every
number the API reads from a request goes through `ascii_integer`, which accepts only ASCII digits,
no more of them than the upper bound has, within the caller's bounds, so none of that reaches `int()`.
"""

from __future__ import annotations

import uuid

from app.api.problems import Problem

BIGINT_MAX = 2**63 - 1  # PostgreSQL's bigint, and a signed 64-bit integer
_DIGITS = frozenset("0123456789")


class InvalidNumber(ValueError):
    """The text is not a whole number made of ASCII digits within the bounds."""


def ascii_integer(raw: str, *, low: int, high: int) -> int:
    """`raw` as an int when it is only ASCII digits and `0 <= low <= value <= high`; else InvalidNumber."""
    if not raw or len(raw) > len(str(high)) or not _DIGITS.issuperset(raw):
        raise InvalidNumber(raw)
    value = int(raw)
    if not low <= value <= high:
        raise InvalidNumber(raw)
    return value


def query_integer(raw: str | None, *, field: str, low: int, high: int, default: int) -> int:
    """A query parameter: `default` when absent, 422 problem+json naming `field` when invalid."""
    if raw is None:
        return default
    try:
        return ascii_integer(raw, low=low, high=high)
    except InvalidNumber:
        raise invalid_query(field, f"an integer from {low} to {high}") from None


def header_integer(raw: str | None, *, low: int, high: int) -> int | None:
    """A numeric header's value, or None when it is absent or not a valid number; the caller decides
    what an unreadable value means (Content-Length refuses it, Last-Event-ID ignores it)."""
    if raw is None:
        return None
    try:
        return ascii_integer(raw, low=low, high=high)
    except InvalidNumber:
        return None


def ascii_uuid(raw: str) -> uuid.UUID:
    """A scan id from a path or a cursor. `uuid.UUID` reads its hex digits with `int(..., 16)`, which
    takes other scripts' digits too (an id spelled in Arabic-Indic digits would name a real scan);
    only ASCII is an id. Raises ValueError."""
    if not raw.isascii():
        raise ValueError("a UUID is ASCII")
    return uuid.UUID(raw)


def invalid_query(field: str, message: str) -> Problem:
    return Problem(422, "invalid query parameter", code="validation", errors=[{"field": field, "message": message}])
