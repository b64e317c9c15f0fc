"""What a worker process holds for its lifetime: pools, clients, and the child-process pools that
parse pages and extract keyphrases."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import asyncpg
import httpx
from arq.connections import ArqRedis
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

from app.core import db
from app.core.settings import Settings
from worker.keyphrases import KeyphraseExtractor
from worker.parse_pool import ParsePool


@dataclass
class Resources:
    settings: Settings
    pool: asyncpg.Pool
    redis: ArqRedis
    http: httpx.AsyncClient  # for services pagelens is configured to call (PSI, LLM), never user URLs
    keyphrases: KeyphraseExtractor
    parser: ParsePool
    owned: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    @classmethod
    async def open(
        cls,
        settings: Settings,
        redis: ArqRedis,
        *,
        pool: asyncpg.Pool | None = None,
        keyphrases: KeyphraseExtractor | None = None,
        parser: ParsePool | None = None,
    ) -> Resources:
        """Create what was not handed in; only what is created here is closed by `close`."""
        stack = contextlib.AsyncExitStack()
        if pool is None:
            pool = await db.wait_for_pool(settings.require_database_url())
            stack.push_async_callback(pool.close)
        if keyphrases is None:
            keyphrases = KeyphraseExtractor(
                settings.keybert_processes,
                settings.keybert_timeout,
                max_batch=settings.keybert_batch,
                threads=settings.keybert_threads,
                plain_ranking=settings.keybert_plain_ranking,
            )
            # Load the model now so the first scan does not pay for it.
            await keyphrases.start()
            stack.push_async_callback(keyphrases.close)
        if parser is None:
            parser = ParsePool(settings.parse_processes)
            await parser.start()
            stack.push_async_callback(parser.close)
        http = httpx.AsyncClient(timeout=settings.external_timeout, trust_env=False)
        # Only this client (PSI, LLM: services pagelens is configured to call) is instrumented and
        # propagates trace context; user URLs are fetched by worker.fetch, which never does.
        HTTPXClientInstrumentor.instrument_client(http)
        stack.push_async_callback(http.aclose)
        return cls(settings, pool, redis, http, keyphrases, parser, stack)

    async def close(self) -> None:
        await self.owned.aclose()
