"""Forwarding checked browser spans (app/api/browser_spans.py) to the collector, in the background.

The request is sent on as it is, over OTLP/HTTP protobuf or OTLP/gRPC, to where the API's own spans
go (the standard OTEL_EXPORTER_OTLP_* endpoint, protocol, headers, compression and certificate) or
to PAGELENS_BROWSER_TRACES_ENDPOINT. At most a few forwards are in flight: when the collector is
slow, further exports are dropped rather than piled up in the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Container, Mapping, MutableSequence
from pathlib import Path
from urllib.parse import urlparse

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from app.api.limits import RateLimit
from app.core.settings import Settings
from observability.otlp_http import OTLPOptions, compress, otlp_options, request_headers, tls_verify

logger = logging.getLogger("pagelens.browser_traces")

MAX_PENDING = 8  # forwards in flight; more are dropped
FORWARD_TIMEOUT = 10.0


Send = Callable[[ExportTraceServiceRequest], Awaitable[object]]


def _over_http(endpoint: str, options: OTLPOptions) -> tuple[Send, Callable[[], Awaitable[None]]]:
    client = httpx.AsyncClient(timeout=FORWARD_TIMEOUT, verify=tls_verify(options), headers=request_headers(options))

    async def send(request: ExportTraceServiceRequest) -> None:
        response = await client.post(endpoint, content=compress(request.SerializeToString(), options.compression))
        response.raise_for_status()

    return send, client.aclose


def _over_grpc(endpoint: str, options: OTLPOptions) -> tuple[Send, Callable[[], Awaitable[None]]]:
    url = urlparse(endpoint)
    target = url.netloc or endpoint
    compression = grpc.Compression.Gzip if options.compression == "gzip" else None
    if url.scheme == "http" or (url.scheme != "https" and options.insecure):
        channel = grpc.aio.insecure_channel(target, compression=compression)
    else:
        roots = Path(options.certificate).read_bytes() if options.certificate else None
        channel = grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(roots), compression=compression)
    export = TraceServiceStub(channel).Export  # type: ignore[no-untyped-call]  # generated, unannotated
    metadata = tuple((k.lower(), v) for k, v in options.headers.items())

    async def send(request: ExportTraceServiceRequest) -> None:
        await export(request, metadata=metadata, timeout=FORWARD_TIMEOUT)

    return send, channel.close


def _drop(attributes: MutableSequence[KeyValue], keys: Container[str]) -> None:
    if any(pair.key in keys for pair in attributes):
        kept = [KeyValue(key=pair.key, value=pair.value) for pair in attributes if pair.key not in keys]
        del attributes[:]
        attributes.extend(kept)


class BrowserTraces:
    """Where checked browser requests go, at most `max_pending` at a time, and the per-client limit
    on exports."""

    def __init__(
        self, send: Send, close: Callable[[], Awaitable[None]], per_minute: int, *, max_pending: int = MAX_PENDING
    ) -> None:
        self.limit = RateLimit(per_minute)
        self.max_pending = max_pending
        self._send, self._close = send, close
        self._pending: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> BrowserTraces | None:
        """To PAGELENS_BROWSER_TRACES_ENDPOINT over OTLP/HTTP, else where the API's own spans go: the
        standard OTEL_EXPORTER_OTLP_* endpoint, protocol, headers, compression and certificate."""
        if not settings.browser_traces_enabled:
            return None
        options = otlp_options()
        if settings.browser_traces_endpoint:
            transport = _over_http(settings.browser_traces_endpoint, options)
        elif settings.otlp_traces_protocol == "grpc":
            transport = _over_grpc(settings.otlp_traces_endpoint or "http://localhost:4317", options)
        else:
            traces = settings.otel_exporter_otlp_traces_endpoint
            base = settings.otel_exporter_otlp_endpoint or "http://localhost:4318"
            transport = _over_http(traces or base.rstrip("/") + "/v1/traces", options)
        return cls(*transport, settings.browser_traces_per_minute)

    def forward(self, request: ExportTraceServiceRequest, resource: Mapping[str, str]) -> bool:
        """Send a checked request on, with `resource` set over each resource's own attributes and the
        same keys taken out of its scopes' and spans' attributes, so that no level of the request
        claims them; False when it is dropped because too many forwards are still in flight (or
        when it holds no span: nothing to send)."""
        if not request.resource_spans:
            return False
        for resource_spans in request.resource_spans:
            attributes = resource_spans.resource.attributes
            _drop(attributes, resource)
            attributes.extend(KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in resource.items())
            for scope_spans in resource_spans.scope_spans:
                _drop(scope_spans.scope.attributes, resource)
                for span in scope_spans.spans:
                    _drop(span.attributes, resource)
        if len(self._pending) >= self.max_pending:
            logger.warning("browser spans dropped: %d forwards still in flight", len(self._pending))
            return False
        task = asyncio.create_task(self._deliver(request))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def _deliver(self, request: ExportTraceServiceRequest) -> None:
        try:
            await self._send(request)
        except Exception as exc:  # httpx.HTTPError, grpc.aio.AioRpcError
            # Telemetry about telemetry: a lost browser batch is logged, never retried or raised.
            logger.warning("browser spans not delivered: %s", str(exc)[:300])

    async def aclose(self) -> None:
        """Let the forwards in flight finish (for at most FORWARD_TIMEOUT s), then close the transport."""
        if self._pending:
            _, late = await asyncio.wait(set(self._pending), timeout=FORWARD_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._close()
