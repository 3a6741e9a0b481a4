"""riskloop's Prometheus metrics. BentoML runs prometheus_client in multiprocess mode, so
these are collected across workers (counters summed, gauges per worker pid) by `exposition`,
which the gateway serves at /metrics. BentoML's own HTTP metrics are off: they label each
series with the raw request path, so a scanner's random paths grew /metrics without bound;
every riskloop label is a route name or a bounded value."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

REGISTRY = CollectorRegistry(auto_describe=True)
REQUESTS = Counter("riskloop_requests_total", "Requests by endpoint and status", ["endpoint", "status"],
                   registry=REGISTRY)  # fmt: skip
LATENCY = Histogram("riskloop_request_latency_seconds", "Handler latency by endpoint", ["endpoint"],
                    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                    registry=REGISTRY)  # fmt: skip
PREDICTIONS = Counter(
    "riskloop_predictions_total", "Scored records by risk band", ["band"], registry=REGISTRY
)
INTERVENTIONS = Counter(
    "riskloop_interventions_total",
    "Interventions triggered (the store applies the cooldown)",
    ["action"],
    registry=REGISTRY,
)
# Per worker (liveall: a dead worker's series go): 1 for the version it serves, so a deploy can
# wait until every worker serves the new champion, and Prometheus can alert on a mix.
SERVED_MODEL = Gauge("riskloop_served_model", "1 for the model version this worker serves",
                     ["version"], multiprocess_mode="liveall", registry=REGISTRY)  # fmt: skip
ENGINE_FALLBACK = Gauge(
    "riskloop_engine_fallback",
    "1 where a fast engine failed its golden-batch check and XGBoost's own serves instead",
    ["engine"],
    multiprocess_mode="liveall",
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "riskloop_log_queue_depth", "Prediction rows waiting to be written", registry=REGISTRY
)
SPOOLED = Gauge(
    "riskloop_log_rows_spooled", "Rows written to the local spool (store down)", registry=REGISTRY
)
DROPPED = Gauge(
    "riskloop_log_rows_dropped", "Prediction rows lost (must stay 0)", registry=REGISTRY
)
WRITTEN = Gauge(
    "riskloop_log_rows_written", "Prediction rows committed to the store", registry=REGISTRY
)
STORE_UP = Gauge("riskloop_store_up", "1 when the prediction store answers", registry=REGISTRY)
DEPLOYMENT_FAILED = Gauge(
    "riskloop_deployment_failed",
    "1 while the latest deployment record could not be served (model load or golden check failed)",
    multiprocess_mode="liveall",
    registry=REGISTRY,
)
# From the store's monitoring_runs (written by `riskloop monitor`, which reads the registry):
# the champion the latest run saw, so Prometheus can compare it with what is served.
CHAMPION = Gauge("riskloop_champion_version", "1 for @champion as of the latest monitoring run",
                 ["version"], multiprocess_mode="max", registry=REGISTRY)  # fmt: skip
MONITOR_LAST_RUN = Gauge(
    "riskloop_monitor_last_run_timestamp_seconds",
    "When the latest monitoring run decided (Unix time)",
    multiprocess_mode="max",
    registry=REGISTRY,
)
MONITOR_RETRAIN = Gauge(
    "riskloop_monitor_retrain",
    "1 when the latest monitoring run decided to retrain (drift, realized AUC or age)",
    multiprocess_mode="max",
    registry=REGISTRY,
)
MONITOR_FACTS_TTL_S = 30.0  # a scrape reads monitoring_runs at most this often per worker


def served(old, new) -> None:
    """A worker's model changed (`old` None at start): the served-model and engine gauges."""
    if old is not None:
        SERVED_MODEL.labels(old.version).set(0)
    SERVED_MODEL.labels(new.version).set(1)
    status = new.scorer.status
    ENGINE_FALLBACK.labels("contributions").set(int(status.contributions != "table"))
    ENGINE_FALLBACK.labels("scores").set(int(status.scores != "trees"))


def exposition() -> tuple[bytes, bytes]:
    """(the Prometheus text of every worker's metrics, its content type)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry), CONTENT_TYPE_LATEST.encode()


class MonitorFacts:
    """The latest monitoring run's facts as gauges, read from the store at most every
    MONITOR_FACTS_TTL_S; a store that fails leaves the last values (riskloop_store_up says so)."""

    def __init__(self, engine) -> None:
        self.engine, self.read_at, self.champion = engine, float("-inf"), None

    def refresh(self, now: float) -> None:
        if now - self.read_at < MONITOR_FACTS_TTL_S:
            return
        import sqlalchemy as sa

        from serving.store import monitoring_runs as runs

        self.read_at = now
        try:
            with self.engine.connect() as conn:
                row = conn.execute(sa.select(runs.c.created_at, runs.c.retrain, runs.c.model_version)
                                   .order_by(runs.c.id.desc()).limit(1)).first()  # fmt: skip
        except sa.exc.SQLAlchemyError:
            return
        if row is None:
            return
        from serving.store import as_utc

        MONITOR_LAST_RUN.set(as_utc(row.created_at).timestamp())
        MONITOR_RETRAIN.set(int(bool(row.retrain)))
        if row.model_version and row.model_version != self.champion:
            if self.champion is not None:
                CHAMPION.labels(self.champion).set(0)
            CHAMPION.labels(row.model_version).set(1)
            self.champion = row.model_version


def update_writer_gauges(writer_stats: dict) -> None:
    QUEUE_DEPTH.set(writer_stats.get("queue_depth", 0))
    SPOOLED.set(writer_stats.get("rows_spooled", 0))
    DROPPED.set(writer_stats.get("rows_dropped", 0))
    WRITTEN.set(writer_stats.get("rows_written", 0))
    STORE_UP.set(1 if writer_stats.get("store_up") else 0)
