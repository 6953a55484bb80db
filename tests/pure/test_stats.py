"""Traffic counters, histogram quantiles and the merge of several workers' snapshots (stats.py)."""

from __future__ import annotations

from bisect import bisect_left

import pytest

from l7switch.stats import BOUNDS, CACHE_HIT, CACHE_MISS, Traffic, count, merge, quantile


def test_count_keeps_classes_bytes_cache_and_buckets() -> None:
    t, listener = Traffic(), Traffic()
    count(t, listener, 200, 10, 100, 0.002, CACHE_HIT)
    count(t, listener, 503, 0, 30, 0.0001, 0)
    count(t, listener, 0, 5, 0, 70.0, CACHE_MISS)  # the client left before any answer; slower than the top
    assert listener.snapshot()["classes"] == [1, 0, 1, 0, 0, 1] and listener.bytes_out == 130
    assert sum(listener.buckets) == 0  # (listeners keep no histogram)
    snap = t.snapshot()
    assert snap["requests"] == 3 and snap["classes"] == [1, 0, 1, 0, 0, 1]
    assert (snap["bytes_in"], snap["bytes_out"], snap["hits"], snap["misses"]) == (15, 130, 1, 1)
    assert snap["buckets"][0] == 1 and snap["buckets"][-1] == 1 and sum(snap["buckets"]) == 3
    assert snap["seconds"] == pytest.approx(70.0021)


def test_bucket_is_the_first_bound_not_below_the_duration() -> None:
    """count() finds the bucket by walking up from the bottom: the same as bisect_left on
    every bound, just beside it and between two."""
    durations = [0.0, 1e-6, 60.0, 61.0, 1e9] + [b for b in BOUNDS] + [b * 0.999 for b in BOUNDS] + [
        b * 1.001 for b in BOUNDS]
    for d in durations:
        t = Traffic()
        count(t, Traffic(), 200, 0, 0, d, 0)
        assert t.buckets.index(1) == bisect_left(BOUNDS, d), d


def test_quantile_interpolates_inside_a_bucket() -> None:
    assert quantile(0.5, [0] * (len(BOUNDS) + 1)) is None
    buckets = [0] * (len(BOUNDS) + 1)
    i = BOUNDS.index(0.01)  # the bucket (0.006, 0.01]
    buckets[i] = 100
    assert quantile(0.5, buckets) == pytest.approx(0.008)
    assert quantile(0.99, buckets) == pytest.approx(0.006 + 0.004 * 0.99)
    buckets[-1] = 100  # half the requests above the top bound
    assert quantile(0.99, buckets) == BOUNDS[-1]


def test_merge_adds_counts_keeps_descriptions_and_averages_latency() -> None:
    a = {"pools": {"web": {"servers": {"s1": {"state": "up", "weight": 3, "inflight": 2, "latency_ms": 4.0,
                                              "traffic": {"requests": 5, "classes": [0, 0, 5, 0, 0, 0]}}}}},
         "uptime_s": 10.0}
    b = {"pools": {"web": {"servers": {"s1": {"state": "up", "weight": 3, "inflight": 1, "latency_ms": 2.0,
                                              "traffic": {"requests": 7, "classes": [0, 0, 6, 0, 1, 0]}},
                                       "s2": {"state": "down", "weight": 1, "inflight": 0}}}},
         "uptime_s": 10.5}
    m = merge([a, b])
    s1 = m["pools"]["web"]["servers"]["s1"]
    assert s1["weight"] == 3 and s1["state"] == "up" and s1["inflight"] == 3 and s1["latency_ms"] == 3.0
    assert s1["traffic"] == {"requests": 12, "classes": [0, 0, 11, 0, 1, 0]}
    assert m["pools"]["web"]["servers"]["s2"]["state"] == "down"  # only one worker had it
    assert m["uptime_s"] == 10.0
