"""Trace ingest: traces/s and batch latency through `POST /v1/traces`, beside the store's own
bulk insert of the same rows, in one run on one machine.

The traces are support conversations as a deployment logs them: a system prompt, the customer's
turns, tool calls and their answers, and assistant turns with OpenAI-shaped behaviour logprobs
(one entry per token), about 5 KB of JSON each. The service (`flywheel serve`, launching off)
takes `--traces` of them in batches of `--batch` from `--clients` concurrent clients; then the
same batches are sent again (every trace a duplicate: what a client's retries cost). The peer
is the floor under any API: the same rows written straight into a fresh store by SQLAlchemy in
one process, batch by batch, with no HTTP, no validation and no JSON parsing.

    python bench/traces_ingest.py                                  # SQLite
    python bench/traces_ingest.py --postgres postgresql+psycopg://u:p@127.0.0.1:5432/db
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.service_load import make_key, start, stop  # noqa: E402
from service.jobs.launcher import LocalRayHead, free_port  # noqa: E402

WORDS = "order refund ship address account verify window policy status tracking delay customer".split()


def conversation(i: int, rng: random.Random) -> dict:
    def reply(n: int) -> tuple[str, list[dict]]:
        tokens = [(" " if k else "") + rng.choice(WORDS) for k in range(n)]
        return "".join(tokens), [{"token": t, "logprob": -rng.random() * 3} for t in tokens]

    first, first_lp = reply(30)
    last, last_lp = reply(40)
    return {"trace_id": f"conv-{i:07d}", "model": "support-agent", "model_version": f"v{i % 3}",
            "created_at": (datetime(2026, 11, 1, tzinfo=UTC) + timedelta(seconds=i)).isoformat(),
            "messages": [
                {"role": "system", "content": "You are the support agent. " + " ".join(WORDS * 4)},
                {"role": "user", "content": "Where is my order " + str(i) + "? " + " ".join(rng.choices(WORDS, k=20))},
                {"role": "assistant", "content": first, "logprobs": {"content": first_lp}},
                {"role": "user", "content": " ".join(rng.choices(WORDS, k=15))},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                    "name": "lookup_order", "arguments": json.dumps({"order": i})}}],
                 "logprobs": {"token_ids": list(range(12)), "logprobs": [-0.1] * 12}},
                {"role": "tool", "tool_call_id": "c1", "content": json.dumps({"status": "shipped", "eta": "2 days"})},
                {"role": "assistant", "content": last, "logprobs": {"content": last_lp}}],
            "outcome": {"outcome": rng.choice(["resolved", "escalated", "violation"])} if i % 2 else None,
            "metadata": {"channel": "chat", "locale": "en"}}


def send(base: str, key: str, batches: list[list[dict]], clients: int) -> dict:
    """Every batch through POST /v1/traces from `clients` concurrent clients: traces/s, p50/p99."""
    queue, latencies, errors, stored = list(reversed(batches)), [], [], [0]

    async def client(session):
        while queue:
            batch = queue.pop()
            body = json.dumps({"traces": batch})
            t0 = time.perf_counter()
            async with session.post(f"{base}/v1/traces", data=body,
                                    headers={"Content-Type": "application/json"}) as r:
                answer = await r.json()
                if r.status >= 400:
                    errors.append(f"{r.status} {answer}")
                else:
                    stored[0] += answer["stored"]
            latencies.append(time.perf_counter() - t0)

    async def main():
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"},
                                         timeout=aiohttp.ClientTimeout(total=600)) as session:
            await asyncio.gather(*(client(session) for _ in range(clients)))

    t0 = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"traces_per_s": sum(map(len, batches)) / wall, "p50": q[49] * 1000, "p99": q[98] * 1000,
            "stored": stored[0], "errors": errors}


def bare_insert(url: str, batches: list[list[dict]]) -> dict:
    """The same rows into a fresh store by SQLAlchemy, one transaction per batch."""
    from sqlalchemy import insert

    from service.core.store import Team, Trace, make_engine, migrate, session_factory

    if url.startswith("sqlite"):
        Path(url.removeprefix("sqlite:///")).unlink(missing_ok=True)
    else:
        make_key(url)  # drops and recreates the schema
    migrate(url)
    sessions = session_factory(make_engine(url))
    with sessions() as s:
        team = Team(name="bare")
        s.add(team)
        s.commit()
        team_id = team.id
    latencies = []
    t0 = time.perf_counter()
    for batch in batches:
        start_batch, now = time.perf_counter(), datetime.now(UTC)
        rows = [{"team_id": team_id, "trace_id": t["trace_id"], "model": t["model"], "model_version": t["model_version"],
                 "messages": t["messages"], "outcome": t["outcome"], "meta": t["metadata"],
                 "created_at": datetime.fromisoformat(t["created_at"]), "received_at": now,
                 "outcome_at": now if t["outcome"] else None} for t in batch]
        with sessions() as s:
            s.execute(insert(Trace), rows)
            s.commit()
        latencies.append(time.perf_counter() - start_batch)
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"traces_per_s": sum(map(len, batches)) / wall, "p50": q[49] * 1000, "p99": q[98] * 1000}


def run(store: str, url: str, ray_address: str, batches: list[list[dict]], clients: int) -> dict:
    key = make_key(url)
    env = {**os.environ, "FLYWHEEL_DATABASE_URL": url, "FLYWHEEL_LAUNCH": "false", "FLYWHEEL_RAY_ADDRESS": ray_address}
    port = free_port()
    service = start([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        first = send(base, key, batches, clients)
        again = send(base, key, batches, clients)
    finally:
        stop(service)
    bare = bare_insert(url, batches)
    total = sum(map(len, batches))
    assert first["stored"] == total and again["stored"] == 0, (first["stored"], again["stored"])
    return {"new": first, "duplicates": again, "bare": bare}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--postgres", default=None, help="a PostgreSQL URL to run against as well")
    a = p.parse_args()
    rng = random.Random(0)
    traces = [conversation(i, rng) for i in range(a.traces)]
    batches = [traces[i:i + a.batch] for i in range(0, len(traces), a.batch)]
    size = statistics.fmean(len(json.dumps(t)) for t in traces[:200])
    head = LocalRayHead(free_port())
    head.start()
    results = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results["SQLite"] = run("sqlite", f"sqlite:///{tmp}/traces.db", head.address, batches, a.clients)
            if a.postgres:
                results["PostgreSQL"] = run("postgres", a.postgres, head.address, batches, a.clients)
    finally:
        head.stop()
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"{a.traces} traces of {size / 1000:.1f} KB (7 messages, 82 logprobs), batches of {a.batch}, "
          f"{a.clients} concurrent clients")
    print(f"  {'store':11}{'what':32}{'traces/s':>10}{'batch p50 ms':>14}{'batch p99 ms':>14}")
    for store, r in results.items():
        for what, row in (("POST /v1/traces, new", r["new"]), ("POST /v1/traces, all duplicates", r["duplicates"]),
                          ("bare SQLAlchemy insert", r["bare"])):
            print(f"  {store:11}{what:32}{row['traces_per_s']:>10.0f}{row['p50']:>14.0f}{row['p99']:>14.0f}"
                  + (f"  errors: {len(row['errors'])}, first {row['errors'][0]}" if row.get("errors") else ""))
        print(f"  {store}: service / bare insert {r['new']['traces_per_s'] / r['bare']['traces_per_s']:.2f}×")


if __name__ == "__main__":
    main()
