"""The Temporal SDK's own metrics (`temporal_*`: polls, task latencies, slots, request failures) on
the process's one /metrics endpoint.

The SDK's Runtime records them into a `MetricBuffer`; this module drains it into a collector of
the default registry, so there is no second endpoint (the Runtime's PrometheusConfig would open
one of its own). The buffer drops updates when full, so a daemon thread drains it every second as
well as each scrape.
"""

from __future__ import annotations

import bisect
import functools
import math
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from temporalio.runtime import (
    BUFFERED_METRIC_KIND_COUNTER,
    BUFFERED_METRIC_KIND_HISTOGRAM,
    BufferedMetricUpdate,
    MetricBuffer,
    MetricBufferDurationFormat,
    Runtime,
    TelemetryConfig,
)

from runtime.logs import get_logger

log = get_logger("memberops.metrics")

BUFFER_SIZE = 100_000
DRAIN_SECONDS = 1.0
# Seconds: the SDK's histograms are latencies (durations reported in seconds, see below).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")

Labels = tuple[tuple[str, str], ...]


@dataclass
class _Histogram:
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(BUCKETS, value)
        if i < len(BUCKETS):
            self.buckets[i] += 1
        self.count += 1
        self.total += value


@dataclass
class _Series:
    kind: int
    name: str
    help: str
    values: dict[Labels, float | _Histogram] = field(default_factory=dict)


def _name(metric_name: str, kind: int, unit: str | None) -> str:
    name = _INVALID.sub("_", metric_name)
    if (
        kind == BUFFERED_METRIC_KIND_HISTOGRAM
        and unit in ("duration", "s", "ms")
        and not name.endswith("_seconds")
    ):
        name += "_seconds"
    return name


def _labels(attributes: Mapping[str, object]) -> Labels:
    return tuple(sorted((_INVALID.sub("_", key), str(value)) for key, value in attributes.items()))


class TemporalMetrics(Collector):
    """The SDK's counters (summed), gauges (last value) and histograms (bucketed here)."""

    def __init__(self, buffer: MetricBuffer) -> None:
        self._buffer = buffer
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}

    def drain(self) -> None:
        with self._lock:
            self.apply(self._buffer.retrieve_updates())

    def apply(self, updates: Sequence[BufferedMetricUpdate]) -> None:
        for update in updates:
            metric = update.metric
            kind = metric.kind
            name = _name(metric.name, kind, metric.unit)
            series = self._series.get(name)
            if series is None:
                series = self._series[name] = _Series(kind, name, metric.description or metric.name)
            labels = _labels(update.attributes)
            value = float(update.value)
            if kind == BUFFERED_METRIC_KIND_COUNTER:
                old = series.values.get(labels, 0.0)
                assert isinstance(old, float)
                series.values[labels] = old + value
            elif kind == BUFFERED_METRIC_KIND_HISTOGRAM:
                histogram = series.values.get(labels)
                if not isinstance(histogram, _Histogram):
                    histogram = series.values[labels] = _Histogram()
                histogram.observe(value)
            else:
                series.values[labels] = value

    def collect(self) -> Iterator[Metric]:
        self.drain()
        with self._lock:
            for series in self._series.values():
                yield _family(series)

    def describe(self) -> Iterator[Metric]:
        return iter(())


def _family(series: _Series) -> Metric:
    if series.kind == BUFFERED_METRIC_KIND_COUNTER:
        family = Metric(series.name, series.help, "counter")
        for labels, value in series.values.items():
            family.add_sample(family.name + "_total", dict(labels), float(value))  # type: ignore[arg-type]
        return family
    if series.kind == BUFFERED_METRIC_KIND_HISTOGRAM:
        family = Metric(series.name, series.help, "histogram")
        for labels, histogram in series.values.items():
            assert isinstance(histogram, _Histogram)
            cumulative = 0
            for bound, n in zip(BUCKETS, histogram.buckets, strict=True):
                cumulative += n
                family.add_sample(series.name + "_bucket", {**dict(labels), "le": str(bound)}, cumulative)
            family.add_sample(series.name + "_bucket", {**dict(labels), "le": "+Inf"}, histogram.count)
            family.add_sample(series.name + "_count", dict(labels), histogram.count)
            family.add_sample(series.name + "_sum", dict(labels), histogram.total)
        return family
    family = Metric(series.name, series.help, "gauge")
    for labels, value in series.values.items():
        family.add_sample(series.name, dict(labels), float(value) if not math.isnan(value) else 0.0)  # type: ignore[arg-type]
    return family


@functools.cache
def runtime() -> Runtime:
    """The process's one Temporal Runtime whose metrics /metrics serves (made on first use)."""
    buffer = MetricBuffer(BUFFER_SIZE, MetricBufferDurationFormat.SECONDS)
    made = Runtime(telemetry=TelemetryConfig(metrics=buffer))
    collector = TemporalMetrics(buffer)
    REGISTRY.register(collector)
    threading.Thread(target=_drain, args=(collector,), name="temporal-metrics", daemon=True).start()
    return made


def _drain(collector: TemporalMetrics) -> None:
    """Forever: empties the buffer (a failed drain is logged; the next one goes on)."""
    while True:
        time.sleep(DRAIN_SECONDS)
        try:
            collector.drain()
        except Exception:
            log.exception("draining the Temporal SDK's metrics failed")
