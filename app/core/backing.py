"""Errors that mean a backing service (PostgreSQL, Redis) is unreachable or restarting.

They say nothing about the request or the scan, so the API answers them with 503 and `Retry-After`,
and the worker retries the job later instead of failing the scan.
"""

from __future__ import annotations

import asyncpg
import redis.exceptions

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused or reset connections; TimeoutError (a slow query or command) is one too
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # "connection is closed", "pool is closing"
    # Class 57: the server is shutting down, crashed or starting up (57P01-57P03) or cancelled the
    # statement (57014): what a PostgreSQL restart looks like to the connections it had.
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    # What asyncpg raises on a pooled connection whose session the server ended while it was idle.
    asyncpg.exceptions.InternalClientError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
