"""Prometheus metrics for the API server, one registry per ``Metrics`` instance.

A private ``CollectorRegistry`` (instead of prometheus-client's global one) lets tests start
many servers in one process without duplicate-registration errors. Names follow
kube-apiserver's so existing dashboards mostly apply. Other components register their own
metrics into ``Metrics.registry``.
"""

from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from werkzeug.wrappers import Response

#: kube-apiserver's apiserver_request_duration_seconds buckets.
LATENCY_BUCKETS = (0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0,
                   4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
_LE = tuple(repr(b) for b in LATENCY_BUCKETS) + ("+Inf",)


class _RequestCollector:
    """Request counter and latency histogram kept in plain dicts, rendered at scrape time.

    prometheus-client's Counter and Histogram take a lock per update and scan the buckets
    linearly (about 1.4 µs a request together); this is ~0.3 µs and every request pays it.
    Updates are not thread-safe, which is fine under gevent's single thread.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int, str], int] = {}
        # (verb, resource) -> [sum, count per bucket..., count in +Inf]
        self.histograms: dict[tuple[str, str], list] = {}

    def describe(self):
        return [CounterMetricFamily("apiserver_request", ""),
                HistogramMetricFamily("apiserver_request_duration_seconds", "")]

    def collect(self):
        counter = CounterMetricFamily(
            "apiserver_request", "Requests by verb, resource, HTTP code and virtual workspace.",
            labels=["verb", "resource", "code", "virtual_workspace"])
        for (verb, resource, code, vw), n in list(self.counts.items()):
            counter.add_metric([verb, resource, str(code), vw], n)
        hist = HistogramMetricFamily(
            "apiserver_request_duration_seconds",
            "Request latency from the request handled to the last byte written; excludes WATCH.",
            labels=["verb", "resource"])
        for (verb, resource), h in list(self.histograms.items()):
            total, buckets = 0, []
            for le, n in zip(_LE, h[1:]):
                total += n
                buckets.append((le, total))
            hist.add_metric([verb, resource], buckets, h[0])
        return [counter, hist]


class _LimiterCollector:
    def __init__(self, limiter) -> None:
        self.limiter = limiter

    def describe(self):
        return []

    def collect(self):
        current = GaugeMetricFamily("apiserver_current_inflight_limited_requests",
                                    "Requests holding a max-in-flight slot (watches and system:masters are exempt).",
                                    labels=["request_kind"])
        dropped = CounterMetricFamily("apiserver_dropped_requests",
                                      "Requests refused with 429 by the max-in-flight limit.", labels=["request_kind"])
        for kind, n in self.limiter.in_flight.items():
            current.add_metric([kind], n)
        for kind, n in self.limiter.rejected.items():
            dropped.add_metric([kind], n)
        return [current, dropped]


class Metrics:
    """Request metrics recorded by ``RequestLogMiddleware`` (and anything else that wants to).

    ``inflight_requests`` and ``open_watches`` are plain ints read at scrape time by the
    ``apiserver_current_inflight_requests`` and ``apiserver_open_watches`` gauges.
    """

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        self._requests = _RequestCollector()
        self.registry.register(self._requests)
        self.inflight_requests = 0
        self.open_watches = 0
        Gauge("apiserver_current_inflight_requests", "Requests being served, excluding open watches.",
              registry=self.registry).set_function(lambda: self.inflight_requests)
        Gauge("apiserver_open_watches", "Watch requests currently streaming.",
              registry=self.registry).set_function(lambda: self.open_watches)

    def track_in_flight_limit(self, limiter) -> None:
        """kube's gauges of a ``kcp_virtual.framework.inflight.InFlightLimiter``: requests holding a slot and
        requests refused with a 429, per ``request_kind`` (readOnly, mutating)."""
        self.registry.register(_LimiterCollector(limiter))

    def observe_request(self, verb: str, resource: str, code: int, virtual_workspace: str,
                        seconds: float, watch: bool = False) -> None:
        """Count a finished request; its latency goes to the histogram unless it was a watch."""
        counts = self._requests.counts
        key = (verb, resource, code, virtual_workspace)
        counts[key] = counts.get(key, 0) + 1
        if not watch:
            hists = self._requests.histograms
            h = hists.get((verb, resource))
            if h is None:
                h = hists[(verb, resource)] = [0.0] + [0] * len(_LE)
            h[0] += seconds
            h[1 + bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """``(body, content_type)`` in the text format (OpenMetrics if ``accept`` asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def wsgi_response(self, environ) -> Response:
        """A response for ``GET /metrics`` honouring the client's Accept header."""
        body, content_type = self.render(environ.get("HTTP_ACCEPT"))
        return Response(body, status=200, headers={"Content-Type": content_type})
