"""Liveness, readiness (store and Ray reachable) and Prometheus metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from sqlalchemy import func, select, text

from service.core.states import JobState
from service.core.store import Job

router = APIRouter(tags=["ops"])


class ServiceMetrics:
    """One registry per app, so several apps (tests) never share counters. With several service
    processes (`flywheel serve --workers N` sets PROMETHEUS_MULTIPROC_DIR), each writes its
    counts to that folder and /metrics answers with the sum over all of them."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.shared = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        self.requests = Counter("flywheel_http_requests_total", "HTTP requests", ["method", "route", "status"],
                                registry=self.registry)
        self.latency = Histogram("flywheel_http_request_seconds", "HTTP request latency", ["method", "route"],
                                 registry=self.registry)
        # Read from the store at each scrape: the latest value is the answer, whichever process wrote it.
        self.jobs = Gauge("flywheel_jobs", "Jobs by state", ["state"], registry=self.registry,
                          multiprocess_mode="mostrecent")
        self.queue = Gauge("flywheel_queue_length", "Queued jobs", registry=self.registry,
                           multiprocess_mode="mostrecent")

    def exposition(self) -> bytes:
        if not self.shared:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.shared)
        return generate_latest(registry)


@router.get("/healthz")
async def healthz() -> dict[str, str]:  # on the event loop: no wait for the request thread pool
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, response: Response) -> dict[str, object]:
    checks = {}
    try:
        with request.app.state.sessions() as s:
            s.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the readiness answer
        checks["store"] = f"error: {exc}"
    checks["ray"] = request.app.state.launcher.ping()
    ready = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ready else 503
    return {"ready": ready, "checks": checks}


@router.get("/metrics")
def metrics(request: Request) -> Response:
    m: ServiceMetrics = request.app.state.metrics
    with request.app.state.sessions() as s:
        counts = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    for state in JobState:
        m.jobs.labels(state.value).set(counts.get(state.value, 0))
    m.queue.set(counts.get(JobState.queued.value, 0))
    return Response(m.exposition(), media_type=CONTENT_TYPE_LATEST)
