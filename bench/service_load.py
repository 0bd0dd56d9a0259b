"""Reads on the control plane against the framework's own limit, in one run on one machine.

Two servers on the same store, each with the same uvicorn (httptools, uvloop) and the same number
of worker processes: the service (`flywheel serve --workers N`, launching off, on a Ray head this
script starts) and `bench/bare_app.py`, bare FastAPI routes doing the same queries. First
`--jobs` jobs are created through the service one by one (each `POST /v1/jobs` runs the spec's
checks on the cluster, so its latency is reported on its own). Then, for 10 and 50 concurrent
clients (aiohttp, one process), each server answers `--requests` reads, 40 % `GET
/v1/jobs?limit=20` and 60 % `GET /v1/jobs/{id}`. Prints req/s, p50/p99 and errors per server and
client count, and the service's throughput as a share of the bare routes'.

    python bench/service_load.py                                   # SQLite, 1 and 2 workers
    python bench/service_load.py --postgres postgresql+psycopg://u:p@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.jobs.launcher import LocalRayHead, free_port  # noqa: E402

CLIENTS = (10, 50)


def make_key(url: str) -> str:
    from sqlalchemy import create_engine, text

    from service.core.store import create_team_with_key

    if url.startswith("postgresql"):
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    return create_team_with_key(url, "bench", quota=2)


def spec(model: str) -> dict:
    return {"name": "load", "model": {"path": model},
            "environment": {"name": "dataset", "config": {"train": str(ROOT / "configs/data/digits.jsonl")}},
            "rewards": [{"name": "regex", "config": {"pattern": "[0-9]+"}}]}


def start(command: list[str], env: dict, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(command, env=env, cwd=ROOT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/jobs", timeout=2).status_code in (200, 401):
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None, f"{command} exited"
        time.sleep(0.2)
    raise RuntimeError(f"{command} did not answer")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(60)


def create_jobs(base: str, key: str, model: str, count: int) -> tuple[list[str], list[float]]:
    ids, latencies = [], []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        for _ in range(count):
            t0 = time.perf_counter()
            r = c.post("/v1/jobs", json=spec(model))
            latencies.append(time.perf_counter() - t0)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
    return ids, latencies


def load(base: str, key: str, ids: list[str], clients: int, requests: int) -> dict:
    """`requests` reads from `clients` concurrent clients: req/s, p50 and p99 in ms, errors."""
    quota, latencies, errors = list(range(requests)), [], []

    async def client(session, rng):
        while quota:
            quota.pop()
            url = f"{base}/v1/jobs?limit=20" if rng.random() < 0.4 else f"{base}/v1/jobs/{rng.choice(ids)}"
            t0 = time.perf_counter()
            try:
                async with session.get(url) as r:
                    await r.read()
                    if r.status >= 400:
                        errors.append(f"{r.status} {url}")
            except aiohttp.ClientError as exc:
                errors.append(f"{type(exc).__name__} {url}")
            latencies.append(time.perf_counter() - t0)

    async def main():
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}, connector=connector) as session:
            await asyncio.gather(*(client(session, random.Random(i)) for i in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100)
    return {"rps": requests / wall, "p50": q[49] * 1000, "p99": q[98] * 1000, "errors": len(errors),
            "first_error": errors[0] if errors else ""}


def run(store: str, url: str, model: str, ray_address: str, workers: int, requests: int, jobs: int) -> None:
    key = make_key(url)
    roots = json.dumps([str(Path(model).parent), str(ROOT / "configs")])  # where the spec's files are
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": url, "FLYWHEEL_LAUNCH": "false", "FLYWHEEL_RAY_ADDRESS": ray_address,
           "FLYWHEEL_DATA_ROOTS": roots}
    service_port, bare_port = free_port(), free_port()
    service = start([sys.executable, "-m", "service.cli", "serve", "--port", str(service_port),
                     "--workers", str(workers)], env, service_port)
    try:
        ids, created = create_jobs(f"http://127.0.0.1:{service_port}", key, model, jobs)
        load(f"http://127.0.0.1:{service_port}", key, ids, 10, 200)  # warm up: connections, caches
        results = {("service", c): load(f"http://127.0.0.1:{service_port}", key, ids, c, requests) for c in CLIENTS}
    finally:
        stop(service)
    bare = start([sys.executable, "-m", "uvicorn", "bare_app:create_app", "--factory", "--app-dir", "bench",
                  "--port", str(bare_port), "--workers", str(workers), "--log-level", "warning"], env, bare_port)
    try:
        load(f"http://127.0.0.1:{bare_port}", key, ids, 10, 200)
        results |= {("bare FastAPI", c): load(f"http://127.0.0.1:{bare_port}", key, ids, c, requests) for c in CLIENTS}
    finally:
        stop(bare)
    q = statistics.quantiles(created, n=100) if len(created) > 1 else created * 99
    print(f"\n{store}, {workers} worker process(es): POST /v1/jobs one at a time (checks on the cluster) "
          f"p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms")
    print(f"  {'server':14}{'clients':>8}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for (server, clients), r in results.items():
        print(f"  {server:14}{clients:>8}{r['rps']:>8.0f}{r['p50']:>9.1f}{r['p99']:>9.1f}{r['errors']:>8}"
              + (f"  first: {r['first_error']}" if r["errors"] else ""))
    for clients in CLIENTS:
        ratio = results[("service", clients)]["rps"] / results[("bare FastAPI", clients)]["rps"]
        print(f"  service / bare FastAPI at {clients} clients: {ratio:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000, help="reads per server and client count")
    p.add_argument("--jobs", type=int, default=10, help="jobs created first, one by one (each a cluster check)")
    p.add_argument("--workers", default="1,2", help="worker processes per server, a comma-separated list")
    p.add_argument("--postgres", default=None, help="a PostgreSQL URL to run against as well")
    a = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    head = LocalRayHead(free_port())
    head.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            from trainer.tiny import build_tiny_model, corpus_lines

            model = str(build_tiny_model(Path(tmp) / "model", corpus_lines(ROOT / "configs/data/digits.jsonl")))
            for workers in [int(w) for w in a.workers.split(",")]:
                run("sqlite", f"sqlite:///{tmp}/load-{workers}.db", model, head.address, workers, a.requests, a.jobs)
                if a.postgres:
                    run("postgres", a.postgres, model, head.address, workers, a.requests, a.jobs)
    finally:
        head.stop()


if __name__ == "__main__":
    main()
