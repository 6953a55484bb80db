"""Prometheus ``/metrics``: the ``internal stats`` snapshot (added up across workers) written in
the text exposition format by prometheus-client.

A collector builds every family from one snapshot at scrape time, so nothing is registered per
server and a reload that removes a server simply stops reporting it. No multiprocess mode is
needed: with workers the master asks each worker for its counters and adds them up
(stats.merge) before writing. Names follow Prometheus's conventions (``_total`` counters,
``_seconds``, ``_bytes``) and HAProxy's exporter's split into listener ("frontend"), pool
("backend") and server families.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    Metric)

from ..spec import MetricsSpec
from ..stats import BOUNDS
from .web import HttpServer, Request, Response, Source

log = logging.getLogger("l7switch")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
CLASSES = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
STATES = ("up", "down", "drain", "maint")


class _Snapshot:
    """A prometheus-client collector over one stats snapshot."""

    def __init__(self, stats: dict[str, Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        st = self.stats
        info = GaugeMetricFamily("l7switch_info", "l7switch version (value 1)", labels=["version"])
        info.add_metric([str(st.get("version", ""))], 1)
        yield info
        yield GaugeMetricFamily("l7switch_uptime_seconds", "Seconds since start", value=st.get("uptime_s", 0))
        yield GaugeMetricFamily("l7switch_workers", "Worker processes serving", value=st.get("workers", 1))
        yield GaugeMetricFamily("l7switch_client_connections", "Client connections open now",
                                value=st.get("clients", 0))
        yield from self._listeners(st.get("listeners") or {})
        yield from self._pools(st.get("pools") or {})

    def _listeners(self, listeners: dict[str, Any]) -> Iterator[Metric]:
        conns = CounterMetricFamily("l7switch_listener_connections", "Client connections accepted",
                                    labels=["listener"])
        reqs = CounterMetricFamily("l7switch_listener_requests", "Requests ended, by status class "
                                   "(none: the client left before any answer)", labels=["listener", "code"])
        bytes_in = CounterMetricFamily("l7switch_listener_request_bytes", "Request body bytes read",
                                       labels=["listener"])
        bytes_out = CounterMetricFamily("l7switch_listener_response_bytes", "Response body bytes sent",
                                        labels=["listener"])
        for name, t in listeners.items():
            conns.add_metric([name], t.get("connections", 0))
            for code, n in zip(CLASSES, t.get("classes") or []):
                reqs.add_metric([name, code], n)
            bytes_in.add_metric([name], t.get("bytes_in", 0))
            bytes_out.add_metric([name], t.get("bytes_out", 0))
        yield from (conns, reqs, bytes_in, bytes_out)

    def _pools(self, pools: dict[str, Any]) -> Iterator[Metric]:
        ps = ["pool"]
        sv = ["pool", "server"]
        queued = GaugeMetricFamily("l7switch_pool_queued", "Requests waiting in the pool's queue", labels=ps)
        retries = CounterMetricFamily("l7switch_pool_retries", "Requests sent again to another server", labels=ps)
        persist = GaugeMetricFamily("l7switch_pool_persistence_entries", "Entries in the pool's persistence "
                                    "table (source, ssl_session)", labels=ps)
        unserved = CounterMetricFamily("l7switch_pool_unserved_requests", "Requests that ended with no "
                                       "server (none available, queue timeout), by status class",
                                       labels=["pool", "code"])
        hit_ratio = GaugeMetricFamily("l7switch_pool_cache_hit_ratio", "Share of responses servers marked "
                                      "as cache hits (X-Cache, Age) since start; absent when none said",
                                      labels=ps)
        keys = GaugeMetricFamily("l7switch_pool_keys", "Request keys a locality scheduler (lblc, lblcr, "
                                 "lard) remembers for each server", labels=sv)
        reqs = CounterMetricFamily("l7switch_server_requests", "Requests ended, by status class", labels=[*sv, "code"])
        b_in = CounterMetricFamily("l7switch_server_request_bytes", "Request body bytes sent up", labels=sv)
        b_out = CounterMetricFamily("l7switch_server_response_bytes", "Response body bytes relayed", labels=sv)
        hits = CounterMetricFamily("l7switch_server_cache_hits", "Responses marked as cache hits", labels=sv)
        misses = CounterMetricFamily("l7switch_server_cache_misses", "Responses marked as cache misses", labels=sv)
        inflight = GaugeMetricFamily("l7switch_server_inflight", "Requests in flight", labels=sv)
        squeued = GaugeMetricFamily("l7switch_server_queued", "Requests waiting for this server", labels=sv)
        up = GaugeMetricFamily("l7switch_server_up", "1 if the server may take requests", labels=sv)
        state = GaugeMetricFamily("l7switch_server_state", "The server's state (1 for the current one)",
                                  labels=[*sv, "state"])
        weight = GaugeMetricFamily("l7switch_server_weight", "Configured weight", labels=sv)
        eweight = GaugeMetricFamily("l7switch_server_effective_weight", "Weight in use (0 while draining)",
                                    labels=sv)
        check = GaugeMetricFamily("l7switch_server_check_duration_seconds", "Duration of the last health "
                                  "check", labels=sv)
        sretries = CounterMetricFamily("l7switch_server_retries", "Requests re-sent elsewhere after failing "
                                       "on this server", labels=sv)
        failures = CounterMetricFamily("l7switch_server_failures", "Connect errors, resets and timeouts",
                                       labels=sv)
        conns = GaugeMetricFamily("l7switch_server_connections", "Open connections to the server", labels=sv)
        idle = GaugeMetricFamily("l7switch_server_idle_connections", "Idle pooled connections", labels=sv)
        hist = HistogramMetricFamily("l7switch_server_request_duration_seconds", "Request durations, from "
                                     "the request head to the end of the response", labels=sv)
        for pname, pool in pools.items():
            queued.add_metric([pname], pool.get("queued", 0))
            retries.add_metric([pname], pool.get("retries", 0))
            persist.add_metric([pname], pool.get("persistence_entries", 0))
            for code, n in zip(CLASSES, (pool.get("unserved") or {}).get("classes") or []):
                unserved.add_metric([pname, code], n)
            for sname, n in (pool.get("keys") or {}).items():
                keys.add_metric([pname, sname], n)
            phits = pmisses = 0
            for sname, s in (pool.get("servers") or {}).items():
                lab = [pname, sname]
                t = s.get("traffic") or {}
                for code, n in zip(CLASSES, t.get("classes") or []):
                    reqs.add_metric([*lab, code], n)
                b_in.add_metric(lab, t.get("bytes_in", 0))
                b_out.add_metric(lab, t.get("bytes_out", 0))
                hits.add_metric(lab, t.get("hits", 0))
                misses.add_metric(lab, t.get("misses", 0))
                phits += t.get("hits", 0)
                pmisses += t.get("misses", 0)
                inflight.add_metric(lab, s.get("inflight", 0))
                squeued.add_metric(lab, s.get("queued", 0))
                up.add_metric(lab, 1 if s.get("up") else 0)
                for name in STATES:
                    state.add_metric([*lab, name], 1 if s.get("state") == name else 0)
                weight.add_metric(lab, s.get("weight", 0))
                eweight.add_metric(lab, s.get("effective_weight", 0))
                c = s.get("check") or {}
                if c.get("ms") is not None:
                    check.add_metric(lab, c["ms"] / 1000)
                sretries.add_metric(lab, s.get("retries", 0))
                failures.add_metric(lab, s.get("failures", 0))
                conns.add_metric(lab, s.get("conns", 0))
                idle.add_metric(lab, s.get("idle_conns", 0))
                buckets = t.get("buckets") or [0] * (len(BOUNDS) + 1)
                cumulative, running = [], 0
                for bound, n in zip((*(repr(b) for b in BOUNDS), "+Inf"), buckets):
                    running += n
                    cumulative.append((bound, running))
                hist.add_metric(lab, cumulative, sum_value=t.get("seconds", 0.0))
            if phits + pmisses:
                hit_ratio.add_metric([pname], phits / (phits + pmisses))
        yield from (queued, retries, persist, unserved, hit_ratio, keys, reqs, b_in, b_out, hits, misses,
                    inflight, squeued, up, state, weight, eweight, check, sretries, failures, conns, idle, hist)


def exposition(stats: dict[str, Any]) -> bytes:
    """The text format for one snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(stats))
    return generate_latest(registry)


class MetricsServer:
    """``metrics.listen``: ``GET /metrics`` with a fresh snapshot from ``source``; nothing else."""

    def __init__(self, spec: MetricsSpec, source: Source, header_timeout: float) -> None:
        self.spec = spec
        self.source = source
        self.server = HttpServer(self.handle, spec.host, spec.port, None, header_timeout, "metrics")

    async def start(self) -> None:
        await self.server.start()
        log.info("Prometheus metrics on http://%s/metrics", self.server.address)

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def port(self) -> int:
        return self.server.port

    async def handle(self, req: Request) -> Response:
        if req.path != "/metrics":
            return Response(404, b"not found: the metrics are at /metrics\n")
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", headers=[("Allow", "GET")])
        stats = await self.source.run(["internal", "stats"])
        return Response(200, exposition(stats), CONTENT_TYPE)
