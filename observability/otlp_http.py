"""OTLP/HTTP: the exporter options from the standard environment, and a sender of request bytes.

`otlp_options` is the one reading of the OTEL_EXPORTER_OTLP_(TRACES_)* headers, compression,
timeout and TLS variables (the signal-specific one first, as the SDK's exporters read them); the span
exporter (observability/otlp_wire.py) and the browser-span forwarding of the API both use it.

`OTLPHTTPSender` POSTs protobuf request bytes on one keep-alive httpx client, with the
specification's retries: on 429, 502, 503, 504 and on connection errors and timeouts, with
exponential backoff and jitter (Retry-After honoured on 429 and 503), all within the export timeout.
"""

from __future__ import annotations

import email.utils
import gzip
import logging
import os
import random
import ssl
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx
from opentelemetry.util.re import parse_env_headers

logger = logging.getLogger("pagelens.tracing")

PROTOBUF = "application/x-protobuf"
DEFAULT_TIMEOUT = 10.0  # seconds, the specification's and the SDK's
RETRYABLE = frozenset({429, 502, 503, 504})
COMPRESSIONS = ("gzip", "deflate", "none")


@dataclass(frozen=True)
class OTLPOptions:
    """The OTLP/HTTP options the environment sets for traces."""

    headers: Mapping[str, str] = field(default_factory=dict)
    compression: str = "none"  # one of COMPRESSIONS
    timeout: float = DEFAULT_TIMEOUT
    certificate: str | None = None  # CA bundle that verifies the collector
    client_key: str | None = None
    client_certificate: str | None = None
    insecure: bool = False  # grpc only: no TLS for an endpoint without a scheme


def otlp_options(environ: Mapping[str, str] | None = None) -> OTLPOptions:
    """OTEL_EXPORTER_OTLP_TRACES_<NAME>, else OTEL_EXPORTER_OTLP_<NAME>, for each option."""
    env = os.environ if environ is None else environ

    def read(name: str) -> str:
        return (env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(f"OTEL_EXPORTER_OTLP_{name}") or "").strip()

    compression = read("COMPRESSION").lower() or "none"
    if compression not in COMPRESSIONS:
        logger.warning("OTLP compression %r is not gzip, deflate or none; sending uncompressed", compression)
        compression = "none"
    try:
        timeout = float(read("TIMEOUT") or DEFAULT_TIMEOUT)
        if not timeout > 0:
            raise ValueError(timeout)
    except ValueError:
        logger.warning(
            "OTLP timeout %r is not a positive number of seconds; using %s", read("TIMEOUT"), DEFAULT_TIMEOUT
        )
        timeout = DEFAULT_TIMEOUT
    return OTLPOptions(
        headers=parse_env_headers(read("HEADERS"), liberal=True),
        compression=compression,
        timeout=timeout,
        certificate=read("CERTIFICATE") or None,
        client_key=read("CLIENT_KEY") or None,
        client_certificate=read("CLIENT_CERTIFICATE") or None,
        insecure=read("INSECURE").lower() == "true",
    )


def tls_verify(options: OTLPOptions) -> ssl.SSLContext | bool:
    """httpx's `verify`: the default CA store, or a context with the configured CA bundle and client
    certificate (httpx deprecates passing paths)."""
    if not (options.certificate or options.client_certificate):
        return True
    context = ssl.create_default_context(cafile=options.certificate)
    if options.client_certificate:
        context.load_cert_chain(options.client_certificate, options.client_key)
    return context


def request_headers(options: OTLPOptions) -> dict[str, str]:
    """The headers of an OTLP/HTTP protobuf request: the configured ones, the content type, and the
    content encoding unless uncompressed."""
    headers = {**options.headers, "Content-Type": PROTOBUF}
    if options.compression != "none":
        headers["Content-Encoding"] = options.compression
    return headers


def compress(body: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(body, compresslevel=6)
    if compression == "deflate":
        return zlib.compress(body)
    return body


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), or None when absent or unreadable."""
    value = response.headers.get("Retry-After", "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class OTLPHTTPSender:
    """Sends OTLP request bytes to one endpoint; `send` is True when the collector took them."""

    def __init__(self, endpoint: str, options: OTLPOptions) -> None:
        self.endpoint = endpoint
        self.options = options
        self._client = httpx.Client(
            headers=request_headers(options), verify=tls_verify(options), timeout=options.timeout
        )
        self._closed = threading.Event()  # also wakes a backoff sleep at shutdown

    def send(self, body: bytes) -> bool:
        if self._closed.is_set():
            logger.warning("OTLP export after shutdown: %d bytes dropped", len(body))
            return False
        content = compress(body, self.options.compression)
        deadline = time.monotonic() + self.options.timeout
        for attempt in range(64):  # bounded by the deadline long before this
            remaining = deadline - time.monotonic()
            try:
                response = self._client.post(self.endpoint, content=content, timeout=max(remaining, 0.001))
            except httpx.TransportError as exc:  # connection refused or reset, timeouts
                failure, wait = f"{type(exc).__name__}: {str(exc)[:200]}", None
            else:
                if response.is_success:
                    return True
                failure = f"HTTP {response.status_code}: {response.text[:200]!r}"
                if response.status_code not in RETRYABLE:
                    logger.warning("OTLP export to %s failed, not retried: %s", self.endpoint, failure)
                    return False
                wait = _retry_after(response) if response.status_code in (429, 503) else None
            if wait is None:
                wait = 2**attempt * random.uniform(0.8, 1.2)
            if time.monotonic() + wait >= deadline or self._closed.wait(wait):
                logger.warning("OTLP export to %s failed after %d attempts: %s", self.endpoint, attempt + 1, failure)
                return False
        return False

    def close(self) -> None:
        self._closed.set()
        self._client.close()
