"""The FastAPI app. `create_app(settings)` builds it; `flywheel serve` runs it with uvicorn.

On start it migrates the store, connects to Ray (starting a local head when no address is set, or
adopting the one a previous run left), reconciles every live job with Ray, and runs the
scheduler (in one process of several: `flywheel serve --workers N`, service/jobs/scheduler.py). On shutdown running jobs go on: the local head is stopped only when none is live, or
with `flywheel serve --stop-jobs`, which cancels them first.
This process never imports torch or a team's code: what needs them runs on the cluster
(docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from service.api import openapi
from service.api.bodies import BodyLimit
from service.api.routes import catalog, deployments, health, jobs, models, report, traces
from service.core import errors
from service.core.config import Settings
from service.core.store import make_engine, migrate, session_factory
from service.jobs.checks import ClusterChecks
from service.jobs.launcher import LocalRayHead, RayJobsLauncher
from service.jobs.scheduler import Scheduler

PROJECT_DIR = Path(__file__).resolve().parents[1]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # Every API process logs (each of `flywheel serve --workers N`'s too); a no-op where the root
    # logger has a handler already.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        migrate(settings.database_url)
        engine = make_engine(settings.database_url)
        app.state.sessions = session_factory(engine)
        head, task = None, None
        address = settings.ray_address
        if address is None:
            head = LocalRayHead(settings.ray_dashboard_port)
            await asyncio.to_thread(head.start)
            address = head.address
        app.state.launcher = await asyncio.to_thread(RayJobsLauncher, address, PROJECT_DIR)
        app.state.checks = ClusterChecks(app.state.launcher, settings.runs_dir / "checks",
                                         settings.max_concurrent_checks, settings.max_checks_per_team)
        app.state.checks.memory_mb = settings.check_memory_mb
        scheduler = Scheduler(app.state.sessions, app.state.launcher, settings)
        if settings.launch:
            if await asyncio.to_thread(scheduler.elect):
                await asyncio.to_thread(scheduler.reconcile)  # before anything new starts
            task = asyncio.create_task(scheduler.run_forever())
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                await asyncio.to_thread(scheduler.resign)
            if head is not None:
                await asyncio.to_thread(scheduler.on_shutdown, head, settings.stop_jobs_on_exit)
            engine.dispose()

    app = FastAPI(title="Flywheel", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.data_roots = [str(p.resolve()) for p in (settings.data_roots or [
        PROJECT_DIR / "runs", PROJECT_DIR / "configs", settings.runs_dir])]
    app.state.metrics = health.ServiceMetrics()
    app.state.streams = jobs.StreamSlots(settings.max_event_streams, settings.max_event_streams_per_key)
    errors.install(app)
    for module in (jobs, traces, models, deployments, report, catalog, health):
        app.include_router(module.router)
    openapi.install(app)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes,
                       paths={"/v1/traces": (settings.max_trace_batch_bytes, "FLYWHEEL_MAX_TRACE_BATCH_BYTES")})
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def uvicorn_options(settings: Settings) -> dict:
    """How `flywheel serve` runs uvicorn: SIGTERM stops the service within `shutdown_grace_s`
    even with event streams open (uvicorn would otherwise wait for them to end)."""
    return {"host": settings.host, "port": settings.port, "log_level": "warning",
            "timeout_graceful_shutdown": settings.shutdown_grace_s}


class RequestMetrics:
    """Counts and times requests by route template. Plain ASGI: no per-request task group."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], route).observe(time.perf_counter() - start)
