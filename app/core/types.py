"""Type aliases and protocols used across the project, in one place."""

from __future__ import annotations

from typing import Any, Protocol

import asyncpg

JSONDict = dict[str, Any]
JSONList = list[Any]
# asyncpg pools and connections share the query methods we use.
Pool = asyncpg.Pool
Record = asyncpg.Record


class Executor(Protocol):
    # Mirrors asyncpg's own signatures, timeout parameters included.
    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...  # noqa: ASYNC109

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...  # noqa: ASYNC109

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any: ...  # noqa: ASYNC109

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...  # noqa: ASYNC109
