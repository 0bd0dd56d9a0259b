"""Serving latency: `flywheel serve-model` (the deployment's model behind the OpenAI
chat-completions API, logging every conversation as a trace) beside vLLM's own OpenAI-compatible
server on the same model, under the same load, in one run on one machine.

The model is registered in a fresh control plane (a job record that succeeded with it as its
export), deployed, and served; `--clients` concurrent `openai` clients each send `--requests`
support-desk openings (`max_tokens`, temperature 1), streamed. Reported per server: requests/s,
generated tokens/s, time to first token p50/p99 and whole-completion latency p50/p99. The peer is
vLLM's server (`vllm serve`, its CPU build here), which logs nothing.

    python bench/serving.py                            # runs/desk-model (make demo builds it)
    python bench/serving.py --model runs/smollm2-135m-instruct --engine vllm --max-tokens 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from environments.support_desk.simulator import make_ticket  # noqa: E402
from service.client import wait_ready  # noqa: E402
from service.jobs.launcher import free_port  # noqa: E402


def register(database_url: str, model: str) -> None:
    """The model as a succeeded job's export, through the service's own job logic."""
    from sqlalchemy import select

    from service.core.states import JobState
    from service.core.store import Job, Team, make_engine, session_factory
    from service.jobs import logic
    from trainer.spec import parse_spec
    from trainer.spec.reports import FinishedData, NumberedFinished

    with session_factory(make_engine(database_url))() as s:
        team = s.scalar(select(Team))
        spec = parse_spec({"name": "bench", "model": {"path": model}, "rewards": [{"name": "resolution"}],
                           "environment": {"name": "support_desk"}}).model_dump(mode="json")
        # The model's folder is the job's run folder: an export must lie inside its job's.
        job = Job(team_id=team.id, name="bench", state=JobState.running, spec=spec, steps=1,
                  run_dir=str(Path(model).resolve()))
        s.add(job)
        s.commit()
        logic.record_report(s, job, NumberedFinished(seq=1, data=FinishedData(export_dir=str(Path(model).resolve()))))
        logic.transition(s, job, JobState.succeeded)
        s.commit()


def load(base_url: str, model: str, clients: int, requests: int, max_tokens: int,
         api_key: str = "unused") -> dict[str, float]:
    from openai import OpenAI

    latencies, firsts, tokens, errors = [], [], [], []
    openings = [make_ticket(9_000_000 + i).opening for i in range(clients * requests)]

    def client(c: int) -> None:
        api = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=600)
        for r in range(requests):
            t0, first, count = time.perf_counter(), None, 0
            try:
                for chunk in api.chat.completions.create(model=model, max_tokens=max_tokens, temperature=1.0,
                                                         stream=True, logprobs=True, messages=[
                                                             {"role": "user", "content": openings[c * requests + r]}]):
                    got = len(chunk.choices[0].logprobs.content) if chunk.choices and chunk.choices[0].logprobs else 0
                    if got and first is None:
                        first = time.perf_counter() - t0
                    count += got
            except Exception as exc:  # noqa: BLE001 - counted
                errors.append(repr(exc))
                continue
            latencies.append(time.perf_counter() - t0)
            firsts.append(first if first is not None else latencies[-1])
            tokens.append(count)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    f = statistics.quantiles(firsts, n=100) if len(firsts) > 1 else firsts * 99
    return {"requests": len(latencies), "errors": len(errors), "req_s": len(latencies) / wall,
            "tokens_s": sum(tokens) / wall, "p50_s": q[49], "p99_s": q[98], "ttft_p50_s": f[49], "ttft_p99_s": f[98],
            "tokens_mean": statistics.fmean(tokens)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="runs/desk-model")
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="Flywheel's engine")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=20, help="per client")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--no-peer", action="store_true", help="skip vLLM's server")
    a = p.parse_args()
    from demos.support_desk import serving

    results = {}
    with tempfile.TemporaryDirectory() as tmp, serving(str(Path(tmp) / "service")) as (url, key, database_url):
        register(database_url, a.model)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as c:
            model_id = c.get("/v1/models").json()["models"][0]["id"]
            c.post("/v1/deployments", json={"name": "bench", "model": model_id}).raise_for_status()
            caller = c.post("/v1/deployments/bench/keys", json={"name": "bench"}).json()["key"]
        port = free_port()
        env = {**os.environ, "FLYWHEEL_URL": url, "FLYWHEEL_API_KEY": key}
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve-model", "bench", "--port", str(port),
                                 "--engine", a.engine], cwd=ROOT, env=env)
        try:
            wait_ready(f"http://127.0.0.1:{port}/healthz", proc, "flywheel serve-model", 600)
            load(f"http://127.0.0.1:{port}/v1", "bench", 2, 2, a.max_tokens, caller)  # warm-up
            results[f"flywheel serve-model ({a.engine})"] = load(f"http://127.0.0.1:{port}/v1", "bench", a.clients,
                                                                 a.requests, a.max_tokens, caller)
        finally:
            proc.terminate()
            proc.wait(60)
    if not a.no_peer:
        port = free_port()
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
        proc = subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", a.model,
                                 "--port", str(port), "--dtype", "float32", "--served-model-name", "bench",
                                 "--enforce-eager"], cwd=ROOT, env=env)
        try:
            wait_ready(f"http://127.0.0.1:{port}/health", proc, "vllm serve", 600)
            load(f"http://127.0.0.1:{port}/v1", "bench", 2, 2, a.max_tokens)
            results["vllm serve (peer)"] = load(f"http://127.0.0.1:{port}/v1", "bench", a.clients, a.requests,
                                                a.max_tokens)
        finally:
            proc.terminate()
            proc.wait(120)
    print(f"\n{a.model}, {a.clients} clients × {a.requests} requests, max_tokens {a.max_tokens}; "
          f"{platform.machine()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    print(f"  {'server':34}{'req/s':>8}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}{'p50 s':>8}{'p99 s':>8}"
          f"{'errors':>8}")
    for name, r in results.items():
        print(f"  {name:34}{r['req_s']:>8.1f}{r['tokens_s']:>10.0f}{r['ttft_p50_s']:>10.3f}{r['ttft_p99_s']:>10.3f}"
              f"{r['p50_s']:>8.3f}{r['p99_s']:>8.3f}{r['errors']:>8}")
    if len(results) == 2:
        ours, peer = results.values()
        print(f"  flywheel / vllm: {ours['tokens_s'] / peer['tokens_s']:.2f}× tokens/s, "
              f"{ours['ttft_p50_s'] / peer['ttft_p50_s']:.2f}× TTFT p50, {ours['p50_s'] / peer['p50_s']:.2f}× p50 latency")


if __name__ == "__main__":
    main()
