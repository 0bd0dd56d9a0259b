"""Load on the control plane, against the real server (launching off) on SQLite and, given a URL,
on PostgreSQL. First it creates `--jobs` jobs one by one: each `POST /v1/jobs` runs the spec's
checks on the cluster (a short Ray job), so its latency is that check's, measured on its own.
Then 50 concurrent clients (aiohttp, one process) list and read jobs for a fixed number of
requests. Prints throughput and p50/p99 latency per endpoint, and the error count.

    python bench/service_load.py                                   # SQLite only
    python bench/service_load.py --postgres postgresql+psycopg://u:p@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def create_jobs(base: str, key: str, model: str, count: int, lat: dict, errors: list) -> list[str]:
    ids = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=300) as c:
        for _ in range(count):
            start = time.perf_counter()
            r = c.post("/v1/jobs", json=spec(model))
            lat["POST /v1/jobs (serial)"].append(time.perf_counter() - start)
            if r.status_code == 201:
                ids.append(r.json()["id"])
            else:
                errors.append(f"POST /v1/jobs: {r.text}")
    return ids


async def client_loop(session, base: str, quota: list, lat: dict, errors: list, ids: list, rng):
    while quota:
        quota.pop()
        if rng.random() < 0.4:
            name, url = "GET /v1/jobs", f"{base}/v1/jobs?limit=20"
        else:
            name, url = "GET /v1/jobs/{id}", f"{base}/v1/jobs/{rng.choice(ids)}"
        start = time.perf_counter()
        try:
            async with session.get(url) as r:
                payload = await r.json()
                ok = r.status < 400
        except aiohttp.ClientError as exc:
            ok, payload = False, exc
        lat[name].append(time.perf_counter() - start)
        if not ok:
            errors.append(f"{name}: {payload}")


def run(store: str, url: str, model: str, clients: int, requests: int, jobs: int) -> None:
    key = make_key(url)
    port = free_port()
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": url, "FLYWHEEL_LAUNCH": "false"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # the service starts its own Ray head: readiness waits for it
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        lat: dict[str, list[float]] = defaultdict(list)
        errors: list[str] = []
        ids = create_jobs(base, key, model, jobs, lat, errors)
        quota = list(range(requests))
        start = time.perf_counter()

        async def main():
            headers = {"Authorization": f"Bearer {key}"}
            connector = aiohttp.TCPConnector(limit=clients)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                await asyncio.gather(*(client_loop(session, base, quota, lat, errors, ids, random.Random(i))
                                       for i in range(clients)))

        asyncio.run(main())
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(10)
    print(f"\n{store}: {requests} reads from {clients} clients in {wall:.1f} s = {requests / wall:.0f} req/s, "
          f"{len(errors)} errors")
    print(f"  {'endpoint':24}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for name, values in sorted(lat.items()):
        q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        print(f"  {name:24}{len(values):>7}{q[49] * 1000:>9.1f}{q[98] * 1000:>9.1f}")
    for e in errors[:5]:
        print("  error:", e)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--jobs", type=int, default=10, help="jobs created first, one by one (each a cluster check)")
    p.add_argument("--postgres", default=None, help="a PostgreSQL URL to run against as well")
    a = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        from trainer.tiny import build_tiny_model, corpus_lines

        model = str(build_tiny_model(Path(tmp) / "model", corpus_lines(ROOT / "configs/data/digits.jsonl")))
        run("sqlite", f"sqlite:///{tmp}/load.db", model, a.clients, a.requests, a.jobs)
        if a.postgres:
            run("postgres", a.postgres, model, a.clients, a.requests, a.jobs)


if __name__ == "__main__":
    main()
