"""Keep the garbage collector cheap in long-running processes.

A full collection walks every object the collector tracks. After start-up a pagelens process holds
a few hundred thousand of them that live as long as it does (modules, the OpenTelemetry SDK,
pydantic's models, the route table). Under load, spans waiting in the exporter's queue live long
enough to reach the oldest generation, so full passes come every few seconds, and each one stopped
the event loop for tens of milliseconds: the API's p99 at 200 requests a second was ~150 ms while
its p50 was 3 ms. `gc.freeze()` at the end of start-up moves everything alive then into a
permanent generation that collections skip; what is created afterwards is collected as before.

The youngest generation is then collected every `YOUNG_THRESHOLD` new container objects instead of
CPython's 700. A traced request or job allocates dozens that outlive it by a few milliseconds
(spans, their attributes, log records): at 700 they were caught alive in most young collections and
promoted, and every promotion is walked again by the older collections. Measured on the traced API
under load (the collector's own callbacks timing each pass): 55 µs of collection per request at
700, 17 µs at 10,000, for a young pass of ~4 ms every ~140 requests (docs/performance.md, API).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def freeze_startup_heap() -> None:
    """Call once, when start-up is done. (No collection first: the little garbage start-up leaves
    behind is frozen with the rest, and a collection here could run other code's finalisers.)"""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
