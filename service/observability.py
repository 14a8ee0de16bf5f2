"""Prometheus metrics: one registry per app (no process globals), exposed at ``GET /metrics``.

* ``metah_http_request_seconds{method, route, status}``: latency per route template (not per raw path);
* ``metah_stage_seconds{stage}``: the search pipeline's stages: decode, encode (waiting for and running the
  forward pass that a search shares with concurrent ones), search, hydrate;
* ``metah_encode_pass_images``: uploads encoded per forward pass of the searches (:mod:`service.batching`);
* ``metah_search_runs_total{on}``: searches answered on the event loop (``loop``) or in a worker thread
  (``thread``), see :class:`service.limits.InlineGate`;
* ``metah_indexed_images``: codes in the serving index; ``metah_jobs{kind, status}``: jobs by state,
  both read at scrape time.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.logs import REQUEST_ID_HEADER, access_log, bind, request_id_of

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
PASS_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# () → (indexed images or None, {(kind, status): count})
StateReader = Callable[[], tuple[int | None, dict[tuple[str, str], int]]]


class _StateCollector(Collector):
    def __init__(self, read: StateReader) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        indexed, jobs = self.read()
        size = GaugeMetricFamily("metah_indexed_images", "Codes in the serving index")
        if indexed is not None:
            size.add_metric([], indexed)
        yield size
        counts = GaugeMetricFamily("metah_jobs", "Jobs by kind and status", labels=["kind", "status"])
        for (kind, status), count in sorted(jobs.items()):
            counts.add_metric([kind, status], count)
        yield counts


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=lambda: CollectorRegistry(auto_describe=False))

    def __post_init__(self) -> None:
        self.request_seconds = Histogram(
            "metah_http_request_seconds",
            "HTTP request latency by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage_seconds = Histogram(
            "metah_stage_seconds",
            "Search pipeline stage latency",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

        self.pass_images = Histogram(
            "metah_encode_pass_images",
            "Search uploads encoded per forward pass (concurrent searches share one)",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )
        self.search_runs = Counter(
            "metah_search_runs",
            "Searches by where they ran: on the event loop (an idle server, a cheap model) or in a worker thread",
            ["on"],
            registry=self.registry,
        )

    def watch_state(self, read: StateReader) -> None:
        self.registry.register(_StateCollector(read))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - started)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestObserver:
    """ASGI middleware, outermost: binds the request id (:mod:`service.logs`), returns it as ``X-Request-ID``,
    observes the latency under the route template and writes one access line, for every HTTP request (a body
    refused while streaming included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        started = time.perf_counter()
        status = 500

        async def tag_response(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), request_id.encode())]
            await send(message)

        with bind(request_id=request_id):
            try:
                await self.app(scope, receive, tag_response)
            finally:
                elapsed = time.perf_counter() - started
                route = getattr(scope.get("route"), "path", None)  # the router fills it in on the way down
                method = scope["method"]
                self.metrics.request_seconds.labels(method, route or "unmatched", str(status)).observe(elapsed)
                access_log.info(
                    "%s %s %d",
                    method,
                    scope["path"],
                    status,
                    extra={
                        "method": method,
                        "path": scope["path"],
                        "route": route,
                        "status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                    },
                )
