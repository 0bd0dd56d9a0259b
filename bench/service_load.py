"""Load on the control plane: 50 concurrent clients (aiohttp, one process) creating, listing and reading jobs (launching
off) for a fixed number of requests, against the real server on SQLite and, given a URL, on
PostgreSQL. Prints throughput and p50/p99 latency per endpoint, and the error count.

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


async def client_loop(session, base: str, model: str, quota: list, lat: dict, errors: list, ids: list, rng):
    body = spec(model)
    while quota:
        quota.pop()
        roll = rng.random()
        if roll < 0.2 or not ids:
            name, method, url, kw = "POST /v1/jobs", "POST", f"{base}/v1/jobs", {"json": body}
        elif roll < 0.5:
            name, method, url, kw = "GET /v1/jobs", "GET", f"{base}/v1/jobs?limit=20", {}
        else:
            name, method, url, kw = "GET /v1/jobs/{id}", "GET", f"{base}/v1/jobs/{rng.choice(ids)}", {}
        start = time.perf_counter()
        try:
            async with session.request(method, url, **kw) as r:
                payload = await r.json()
                ok = r.status < 400
                if name == "POST /v1/jobs" and ok:
                    ids.append(payload["id"])
        except aiohttp.ClientError as exc:
            ok, payload = False, exc
        lat[name].append(time.perf_counter() - start)
        if not ok:
            errors.append(f"{name}: {payload}")


def run(store: str, url: str, model: str, clients: int, requests: int) -> None:
    key = make_key(url)
    port = free_port()
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": url, "FLYWHEEL_LAUNCH": "false"}
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        lat: dict[str, list[float]] = defaultdict(list)
        errors: list[str] = []
        ids: list[str] = []
        quota = list(range(requests))
        start = time.perf_counter()

        async def main():
            headers = {"Authorization": f"Bearer {key}"}
            connector = aiohttp.TCPConnector(limit=clients)
            async with aiohttp.ClientSession(headers=headers, connector=connector) as session:
                await asyncio.gather(*(client_loop(session, base, model, quota, lat, errors, ids, random.Random(i))
                                       for i in range(clients)))

        asyncio.run(main())
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(10)
    print(f"\n{store}: {requests} requests from {clients} clients in {wall:.1f} s = {requests / wall:.0f} req/s, "
          f"{len(errors)} errors")
    print(f"  {'endpoint':22}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for name, values in sorted(lat.items()):
        q = statistics.quantiles(values, n=100)
        print(f"  {name:22}{len(values):>7}{q[49] * 1000:>9.1f}{q[98] * 1000:>9.1f}")
    for e in errors[:5]:
        print("  error:", e)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--postgres", default=None, help="a PostgreSQL URL to run against as well")
    a = p.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        from trainer.tiny import build_tiny_model, corpus_lines

        model = str(build_tiny_model(Path(tmp) / "model", corpus_lines(ROOT / "configs/data/digits.jsonl")))
        run("sqlite", f"sqlite:///{tmp}/load.db", model, a.clients, a.requests)
        if a.postgres:
            run("postgres", a.postgres, model, a.clients, a.requests)


if __name__ == "__main__":
    main()
