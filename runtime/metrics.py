"""What a MemberOps process tells Prometheus, and the HTTP endpoint it tells it on.

Every metric lives in prometheus_client's default registry, one per process: in tests the four
services share a process and their series are told apart by their labels (`grpc_service`, the
pool's `service`), never by a registry each. Labels stay few-valued: tenant, journey key, channel,
outcome, never a member id.

The endpoint (`serve`) answers `/metrics` and `GET /healthz` (200 while the process runs: the
worker's liveness probe) from a daemon thread, so a busy event loop never delays a scrape, and the
gauges are read at scrape time (collectors), not kept current by a loop.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, disable_created_metrics, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector, CollectorRegistry
from temporalio.runtime import Runtime

from runtime import db, temporal_metrics
from runtime.config import Settings

# No `_created` series (see grpc_metrics).
disable_created_metrics()  # type: ignore[no-untyped-call]

# --- ledger, journeys ---------------------------------------------------------------------------

LEDGER_ENTRIES = Counter(
    "memberops_ledger_entries_total",
    "Points ledger entries written, by kind (the entry's reason: task, order, operator, "
    "redemption, expiry, order_reversal, task_reversal).",
    ["tenant", "kind"],
)
ENROLMENTS = Counter(
    "memberops_journey_enrolments_total",
    "Members enrolled into a journey (a member run's enrolment row, or a broadcast cohort's), by arm.",
    ["tenant", "journey", "arm"],
)
SENDS = Counter(
    "memberops_journey_sends_total",
    "Journey send outcomes by channel: sent, failed, unknown (the provider may have it), skipped, "
    "deferred (quiet hours, caps, rate limits; asked again later), retry (not taken; sent again).",
    ["tenant", "journey", "channel", "outcome"],
)


def ledger_entries(tenant_id: str, kind: str, count: int = 1) -> None:
    """`count` ledger entries of `kind` written."""
    if count:
        LEDGER_ENTRIES.labels(tenant_id, kind).inc(count)


def enrolled(tenant_id: str, journey_key: str, arm: str, count: int = 1) -> None:
    if count:
        ENROLMENTS.labels(tenant_id, journey_key, arm).inc(count)


def sent(tenant_id: str, journey_key: str, channel: str, outcome: str) -> None:
    SENDS.labels(tenant_id, journey_key, channel or "none", outcome).inc()


# --- real-time tag refreshes ---------------------------------------------------------------------

REFRESH_QUEUED = Gauge(
    "memberops_tag_refresh_queued_members",
    "Members waiting in this process for a real-time tag refresh lane (batches not started yet).",
    ["tenant"],
)
REFRESH_SECONDS = Histogram(
    "memberops_tag_refresh_seconds",
    "From a real-time refresh batch's first request to its refresh's end: the longest a write in "
    "it waited for its tags (outcome ok or failed).",
    ["tenant", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
REFRESH_SWEPT = Counter(
    "memberops_tag_refresh_swept_members_total",
    "Members the sweeper found owed a refresh for seconds (a failed refresh, a process that died).",
    ["tenant"],
)


# --- audience bitmaps -----------------------------------------------------------------------------

AUDIENCE_BITMAP_BYTES = Gauge(
    "memberops_audience_bitmap_bytes",
    "Bytes the audience service's bitmap index holds for the tenant (tag and profile bitmaps, member "
    "ids; services/audience/bitmaps.py), set after each refresh that changed it.",
    ["tenant"],
)


def refresh_done(tenant_id: str, opened: float, ok: bool) -> None:
    """A refresh batch opened at `opened` (time.perf_counter()) ended."""
    REFRESH_SECONDS.labels(tenant_id, "ok" if ok else "failed").observe(time.perf_counter() - opened)


# --- feed consumers ------------------------------------------------------------------------------


class FeedLag(Collector):
    """`memberops_feed_lag_seconds{consumer,feed,tenant}`: seconds since the consumer, in this
    process, last read its feed up to the head (a read that returned fewer entries than it asked
    for) and applied what it read. Every entry settled on the feed before that moment has been
    applied, so no entry has waited for this consumer longer than the value: an upper bound on the
    age of the oldest unapplied entry, which an idle consumer keeps near its poll interval. It
    starts counting when the consumer starts, so one that never gets through a round shows too.
    Replicas take rounds in turn (whoever holds the tenant's lock), so a fleet's lag is the
    smallest over its replicas: `min by (consumer, feed, tenant)`.

    Also `memberops_feed_entries_applied_total{consumer,feed,tenant}`."""

    def __init__(self) -> None:
        self._head: dict[tuple[str, str, str], float] = {}
        self.applied = Counter(
            "memberops_feed_entries_applied_total",
            "Feed entries a consumer applied (its cursor moved past them).",
            ["consumer", "feed", "tenant"],
        )

    def watch(self, consumer: str, feed: str, tenants: Iterable[str]) -> None:
        """The consumer starts following these tenants' feed now."""
        now = time.monotonic()
        for tenant_id in tenants:
            self._head.setdefault((consumer, feed, tenant_id), now)

    def round(
        self, consumer: str, feed: str, tenant_id: str, started: float, applied: int, at_head: bool
    ) -> None:
        """A round begun at `started` (time.monotonic()) applied `applied` entries; `at_head`: it
        read everything there was."""
        key = (consumer, feed, tenant_id)
        if at_head:
            self._head[key] = max(self._head.get(key, started), started)
        else:
            self._head.setdefault(key, started)
        if applied:
            self.applied.labels(consumer, feed, tenant_id).inc(applied)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "memberops_feed_lag_seconds",
            "Seconds since the consumer last read its feed to the head and applied it (an upper bound "
            "on how long any entry has waited for it).",
            labels=["consumer", "feed", "tenant"],
        )
        now = time.monotonic()
        for key, head in list(self._head.items()):
            family.add_metric(list(key), max(now - head, 0.0))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


FEED = FeedLag()
REGISTRY.register(FEED)

# --- database pools ------------------------------------------------------------------------------


class PoolUse(Collector):
    """Connections of every open `runtime.db.Database` of the process, by the service it serves
    and its pool (primary: requests; reading: the tenants' read-only pools), read at scrape time."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        labels = ["service", "pool"]
        families = (
            GaugeMetricFamily(
                "memberops_db_pool_connections_in_use", "Connections handed out.", labels=labels
            ),
            GaugeMetricFamily("memberops_db_pool_connections", "Connections open.", labels=labels),
            GaugeMetricFamily(
                "memberops_db_pool_connections_max", "Connections the pool may open.", labels=labels
            ),
        )
        totals: dict[tuple[str, str], list[int]] = {}
        for database in _open_databases():
            for pool, *figures in database.usage():
                total = totals.setdefault((database.name, pool), [0, 0, 0])
                for i, figure in enumerate(figures):
                    total[i] += figure
        for key, figures in sorted(totals.items()):
            for family, figure in zip(families, figures, strict=True):
                family.add_metric(list(key), figure)
        yield from families

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _open_databases() -> list[db.Database]:
    for _ in range(3):  # a Database opened in the loop's thread while this one copies the set
        try:
            return list(db.OPEN)
        except RuntimeError:
            continue
    return []


REGISTRY.register(PoolUse())

# --- the endpoint --------------------------------------------------------------------------------


class _Quiet(WSGIRequestHandler):
    """No access-log line per scrape on standard error (the process logs JSON there)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class MetricsServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def _app(registry: CollectorRegistry) -> Any:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n"]
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"/metrics or /healthz\n"]

    return app


def split_address(address: str) -> tuple[str, int]:
    """("host", port) of "host:port" or "[v6]:port"."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"MEMBEROPS_METRICS_ADDRESS must be host:port, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(address: str, registry: CollectorRegistry = REGISTRY) -> MetricsServer:
    """Serves `/metrics` and `/healthz` on `address` ("host:port"; port 0 picks one) from a daemon
    thread until `close` (or the process ends)."""
    host, port = split_address(address)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = make_server(host, port, _app(registry), Server, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)


def start(settings: Settings) -> MetricsServer | None:
    """Serves this process's metrics on MEMBEROPS_METRICS_ADDRESS (none when empty), the Temporal
    SDK's among them: the default Runtime, which every Temporal client of the process uses, records
    into the buffer the endpoint drains (so this runs before any client connects)."""
    if not settings.metrics_address:
        return None
    Runtime.set_default(temporal_metrics.runtime())
    return serve(settings.metrics_address)
