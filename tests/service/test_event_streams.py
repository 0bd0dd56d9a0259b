"""Event streams cannot stop the service: 60 followers of one job's events (server-sent events)
once exhausted the store's connection pool (each held a connection for its life, and each poll
blocked the event loop waiting for another), after which nothing answered and SIGTERM did
nothing. Now a stream holds no connection between polls, streams are bounded per key and overall
(429 beyond), `/healthz` answers throughout, and SIGTERM stops the service."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest
from sqlalchemy import select

from service.core.store import Team, make_engine, session_factory
from service.jobs import logic
from tests.conftest import DIGITS
from tests.service.conftest import ServiceProcess, auth
from trainer.spec import parse_spec

FOLLOWERS = 60


def queued_job(database_url: str, runs_dir: str, tiny_model) -> str:
    """A job that stays queued (the service launches nothing): its event stream never ends."""
    spec = parse_spec({"name": "watched", "model": {"path": str(tiny_model)},
                       "environment": {"name": "dataset", "config": {"train": str(DIGITS)}},
                       "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}]})
    with session_factory(make_engine(database_url))() as s:
        team = s.scalar(select(Team).where(Team.name == "alice"))
        return logic.create_job(s, team, spec, runs_dir)[0].id


async def follow_and_probe(url: str, key: str, job_id: str) -> tuple[list[int], list[float], int, int]:
    """Open FOLLOWERS streams plus one too many, time /healthz while they are open, and check that
    the API still answers a request that needs the store."""
    limits = httpx.Limits(max_connections=FOLLOWERS + 10)
    async with httpx.AsyncClient(base_url=url, headers=auth(key), timeout=10, limits=limits) as client:
        opened: list[int] = []
        streams = []
        for _ in range(FOLLOWERS + 1):
            request = client.build_request("GET", f"/v1/jobs/{job_id}/events",
                                           headers={"Accept": "text/event-stream"})
            response = await client.send(request, stream=True)
            opened.append(response.status_code)
            streams.append(response)
        health = []
        for _ in range(10):
            start = time.perf_counter()
            assert (await client.get("/healthz")).status_code == 200
            health.append(time.perf_counter() - start)
            await asyncio.sleep(0.2)
        listed = (await client.get("/v1/jobs")).status_code
        first = await anext(streams[0].aiter_text())
        return opened, health, listed, len(first)


def test_sixty_followers_leave_the_service_answering_and_sigterm_stops_it(tmp_path, ray_head, tiny_model):
    service = ServiceProcess(tmp_path, ray_head, max_event_streams=FOLLOWERS, max_event_streams_per_key=FOLLOWERS,
                             shutdown_grace_s=2)
    job_id = queued_job(service.database_url, str(tmp_path / "runs"), tiny_model)
    try:
        opened, health, listed, first = asyncio.run(follow_and_probe(service.url, service.key, job_id))
        assert opened[:FOLLOWERS] == [200] * FOLLOWERS and opened[FOLLOWERS] == 429
        assert max(health) < 2.0, health
        assert listed == 200 and first > 0
    finally:
        start = time.monotonic()
        service.proc.send_signal(signal.SIGTERM)
        service.proc.wait(30)
    assert time.monotonic() - start < 20


@pytest.mark.one_store
def test_streams_are_bounded_per_key(client, teams, tiny_model, tmp_path, database_url):
    client.app.state.streams.per_key = 2
    key = teams.key("alice")[0]
    job_id = queued_job(database_url, str(tmp_path / "runs"), tiny_model)
    sse = {**auth(key), "Accept": "text/event-stream"}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=sse) as a, \
            client.stream("GET", f"/v1/jobs/{job_id}/events", headers=sse) as b:
        assert a.status_code == b.status_code == 200
        third = client.get(f"/v1/jobs/{job_id}/events", headers=sse)
        assert third.status_code == 429 and "FLYWHEEL_MAX_EVENT_STREAMS_PER_KEY" in third.json()["error"]["message"]
        other = client.get(f"/v1/jobs/{job_id}/events", headers=auth(key))  # paged JSON is not a stream
        assert other.status_code == 200
