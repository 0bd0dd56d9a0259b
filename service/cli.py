"""`flywheel`: run the service, administer teams and keys, and drive jobs over REST.

    flywheel serve                                  # API on 127.0.0.1:8000, local Ray head
    flywheel serve --workers 2                      # two API processes, one scheduling
    flywheel admin create-team support --quota 2    # then: flywheel admin create-key support
    export FLYWHEEL_URL=http://127.0.0.1:8000 FLYWHEEL_API_KEY=fw_...
    flywheel submit configs/demo.toml --follow
    flywheel list | get JOB | follow JOB | cancel JOB | validate SPEC | rewards | environments
    flywheel traces import LOGS.jsonl | export --outcome resolved | stats --model support-agent
    flywheel models list | show MODEL | import-gguf SmolLM2-135M-Instruct.Q4_1.gguf runs/smollm2-135m-instruct
    flywheel deploy create support-agent --model MODEL | promote support-agent MODEL | rollback support-agent
    flywheel deploy keys create support-agent | list support-agent | revoke support-agent KEY_ID
    flywheel serve-model support-agent --port 8100  # the OpenAI API at http://127.0.0.1:8100/v1, logging traces
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.client import check, client, console, names_table, show
from service.models.cli import deploy, models
from service.traces.cli import traces
from trainer.spec.results import result_table

app = typer.Typer(help=__doc__, no_args_is_help=True, rich_markup_mode=None)
admin = typer.Typer(help="Teams and API keys (acts on the store directly).", no_args_is_help=True)
app.add_typer(admin, name="admin")
app.add_typer(models, name="models")
app.add_typer(deploy, name="deploy")
app.add_typer(traces, name="traces")
TERMINAL = {"succeeded", "failed", "cancelled"}


# ── service ────────────────────────────────────────────────────────────────────────────────────

@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers: Annotated[int, typer.Option(min=1, max=64, help="API processes; one of them schedules")] = 1,
          stop_jobs: Annotated[bool, typer.Option("--stop-jobs", help="on exit, cancel live jobs and stop the "
                                                  "local Ray head (by default they run on)")] = False) -> None:
    """Run the API (and, with no FLYWHEEL_RAY_ADDRESS, a local Ray head)."""
    import uvicorn

    from service.core.config import Settings
    from service.main import create_app, uvicorn_options

    settings = Settings(host=host, port=port, workers=workers,
                        **({"stop_jobs_on_exit": True} if stop_jobs else {}))
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **uvicorn_options(settings))
    else:
        _serve_workers(settings)


def _serve_workers(settings) -> None:
    """Several uvicorn processes on one port. This process migrates the store and starts (or
    adopts) the local Ray head before they start, and on exit does what one process does on its
    own exit: leave the head up for live jobs, or end them with --stop-jobs. The processes get
    their settings from the environment, the head's address among them."""
    import uvicorn

    from service.core.store import make_engine, migrate, session_factory
    from service.jobs.launcher import LocalRayHead, RayJobsLauncher
    from service.jobs.scheduler import Scheduler
    from service.main import PROJECT_DIR, uvicorn_options

    migrate(settings.database_url)
    head = None
    if settings.ray_address is None:
        head = LocalRayHead(settings.ray_dashboard_port)
        head.start()
        os.environ["FLYWHEEL_RAY_ADDRESS"] = head.address
    os.environ.update({"FLYWHEEL_HOST": settings.host, "FLYWHEEL_PORT": str(settings.port)})
    metrics_dir = tempfile.TemporaryDirectory(prefix="flywheel-metrics-")  # the processes' shared counts
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir.name
    with metrics_dir:
        uvicorn.run("service.main:create_app", factory=True, workers=settings.workers, **uvicorn_options(settings))
    if head is not None:
        launcher = RayJobsLauncher(head.address, PROJECT_DIR)
        Scheduler(session_factory(make_engine(settings.database_url)), launcher, settings).on_shutdown(
            head, settings.stop_jobs_on_exit)


def _sessions():
    from service.core.config import Settings
    from service.core.store import make_engine, migrate, session_factory

    url = Settings().database_url
    migrate(url)
    return session_factory(make_engine(url))


@admin.command("create-team")
def create_team(name: str, quota: Annotated[int, typer.Option(help="concurrent jobs")] = 2) -> None:
    from service.core.store import Team

    with _sessions()() as s:
        team = Team(name=name, max_concurrent_jobs=quota)
        s.add(team)
        s.commit()
        console.print(f"team {name} ({team.id}), quota {quota}")


@admin.command("create-key")
def create_key(team: str) -> None:
    """Print a new API key for TEAM (by name). It is shown once; only its hash is stored."""
    from sqlalchemy import select

    from service.core.auth import new_api_key
    from service.core.store import ApiKey, Team

    with _sessions()() as s:
        row = s.scalar(select(Team).where(Team.name == team))
        if row is None:
            raise typer.BadParameter(f"no team {team!r}", param_hint="TEAM")
        key, key_hash, prefix = new_api_key()
        record = ApiKey(team_id=row.id, key_hash=key_hash, prefix=prefix)
        s.add(record)
        s.commit()
        print(key)
        print(f"(key id {record.id}, team {team})", file=sys.stderr)


@admin.command("revoke-key")
def revoke_key(key_id: str) -> None:
    from service.core.store import ApiKey

    with _sessions()() as s:
        record = s.get(ApiKey, key_id)
        if record is None:
            raise typer.BadParameter(f"no key {key_id!r}", param_hint="KEY_ID")
        record.revoked = True
        s.commit()
        console.print(f"revoked {key_id}")


# ── client ─────────────────────────────────────────────────────────────────────────────────────

def _spec(path: Path) -> dict:
    from trainer.spec import load_spec

    # Parse locally first: a bad file is reported with its own name, before any request.
    return load_spec(path).model_dump(mode="json")


@app.command()
def submit(spec: Path, follow_: Annotated[bool, typer.Option("--follow")] = False,
           priority: int = 0, idempotency_key: str | None = None) -> None:
    """Submit a run file; print the job id (and follow it with --follow)."""
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with client() as c:
        # The spec's checks run on the cluster first (seconds; more while a new head starts up).
        job = check(c.post("/v1/jobs", json=_spec(spec), params={"priority": priority}, headers=headers,
                            timeout=300))
    console.print(f"{job['id']} {job['state']} (queue position {job['queue_position']})")
    if follow_:
        follow(job["id"])


@app.command()
def validate(spec: Path, dry_run: Annotated[int, typer.Option(
        "--dry-run", help="roll out and score N sampled tasks with the base model")] = 0) -> None:
    """Validate a run file on the service without launching it (and, with --dry-run N, see what
    its rewards will look like)."""
    with client() as c:
        out = check(c.post("/v1/jobs:validate", json=_spec(spec), params={"dry_run": dry_run},
                            timeout=600))
    console.print("valid")
    if "dry_run" in out:
        print_dry_run(out["dry_run"])


def print_dry_run(r: dict) -> None:
    console.print(f"dry run: {r['tasks']} tasks × {r['group_size']} = {r['samples']} samples in {r['rollout_s']:.1f} s, "
                  f"{r['response_tokens_mean']:.1f} tokens each")
    rows = [("total", {**r["reward"], "none": r["failed_samples"]}), *r["components"].items()]
    table = names_table("reward", "count", "none", "mean", "std", "min", "p10", "p50", "p90", "max")
    for name, d in rows:
        stats = [f"{d[k]:.3g}" if k in d else "" for k in ("mean", "std", "min", "p10", "p50", "p90", "max")]
        table.add_row(name, str(d["count"]), str(d.get("none", "")), *stats)
    show(table)
    g = r["groups"]
    console.print(f"groups with all-equal rewards: {g['all_equal']}/{g['count']} ({g['all_equal_share']:.0%})")
    if "outcomes" in r:
        console.print("outcomes: " + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items()))
    for w in r["warnings"]:
        console.print(f"warning: {w}", style="yellow")


@app.command("list")
def list_jobs(state: str | None = None, limit: int = 20) -> None:
    with client() as c:
        page = check(c.get("/v1/jobs", params={k: v for k, v in {"state": state, "limit": limit}.items() if v}))
    table = Table("id", "name", "state", "step", "reward", "created", box=box.SIMPLE_HEAD, pad_edge=False)
    for j in page["jobs"]:
        reward = (j["latest_metrics"] or {}).get("reward/mean")
        table.add_row(j["id"], j["name"], j["state"], f"{j['step']}/{j['steps']}",
                      f"{reward:.3f}" if reward is not None else "", j["created_at"][:19])
    show(table)


@app.command()
def get(job_id: str) -> None:
    with client() as c:
        print(json.dumps(check(c.get(f"/v1/jobs/{job_id}")), indent=2))


@app.command()
def result(job_id: str) -> None:
    """The job's evaluation before and after training, side by side."""
    with client() as c:
        job = check(c.get(f"/v1/jobs/{job_id}"))
    if not job.get("result"):
        console.print(f"{job_id} has no evaluation yet (state {job['state']})")
        raise typer.Exit(1)
    show(result_table(job["result"]))


@app.command()
def cancel(job_id: str) -> None:
    with client() as c:
        job = check(c.post(f"/v1/jobs/{job_id}/cancel"))
    console.print(f"{job['id']} {job['state']}")


@app.command()
def follow(job_id: str, interval: float = 1.0) -> None:
    """A progress bar until the job ends; exit 1 unless it succeeded."""
    with client() as c, Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(job_id, total=None, info="")
        while True:
            job = check(c.get(f"/v1/jobs/{job_id}"))
            m = job["latest_metrics"] or {}
            info = f"{job['state']} step {job['step']}/{job['steps']}"
            if "reward/mean" in m:
                info += f" reward {m['reward/mean']:.3f}"
            bar.update(task, total=job["steps"] or None, completed=job["step"], info=info)
            if job["state"] in TERMINAL:
                break
            time.sleep(interval)
    console.print(f"{job_id} {job['state']}" + (f": {job['error']}" if job.get("error") else ""))
    if job.get("result"):
        show(result_table(job["result"]))
    if job["state"] != "succeeded":
        raise typer.Exit(1)


@app.command()
def rewards() -> None:
    with client() as c:
        for name, info in check(c.get("/v1/rewards"))["rewards"].items():
            console.print(f"{name:20} {info['source']:12} {(info['doc'] or '').splitlines()[0] if info['doc'] else ''}")


@app.command()
def environments() -> None:
    with client() as c:
        for name, info in check(c.get("/v1/environments"))["environments"].items():
            console.print(f"{name:20} {info['doc'].splitlines()[0] if info['doc'] else ''}")


@app.command("serve-model", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve_model(ctx: typer.Context, deployment: str) -> None:
    """Serve DEPLOYMENT's current model over the OpenAI chat-completions API, logging every
    conversation as a trace (options: python -m serving --help). The command becomes the
    serving process (exec): the control plane's CLI never loads torch."""
    os.execv(sys.executable, [sys.executable, "-m", "serving", deployment, *ctx.args])  # its signals too


deploy_keys = typer.Typer(help="Keys the callers of a deployment's model server present (flywheel serve-model).",
                          no_args_is_help=True)
deploy.add_typer(deploy_keys, name="keys")


@deploy_keys.command("create")
def create_deploy_key(deployment: str, name: Annotated[str, typer.Option(help="a label to recognise it by")] = ""
                      ) -> None:
    """Print a new key for DEPLOYMENT's callers (shown this once; stored hashed)."""
    with client() as c:
        created = check(c.post(f"/v1/deployments/{deployment}/keys", json={"name": name}))
    console.print(f"{created['id']}: give callers this key (OpenAI's api_key); it is not shown again", style="dim")
    print(created["key"])


@deploy_keys.command("list")
def list_deploy_keys(deployment: str) -> None:
    with client() as c:
        rows = check(c.get(f"/v1/deployments/{deployment}/keys"))["keys"]
    table = Table("id", "name", "prefix", "created", "revoked", box=box.SIMPLE_HEAD, pad_edge=False)
    for k in rows:
        table.add_row(k["id"], k["name"], k["prefix"] + "...", k["created_at"][:19], (k["revoked_at"] or "")[:19])
    show(table)


@deploy_keys.command("revoke")
def revoke_deploy_key(deployment: str, key_id: str) -> None:
    """Revoke KEY_ID: the model server refuses it from its next poll of the deployment on."""
    with client() as c:
        check(c.delete(f"/v1/deployments/{deployment}/keys/{key_id}"))
    console.print(f"revoked {key_id}")


# ── models ─────────────────────────────────────────────────────────────────────────────────────

@models.command("import-gguf")
def import_gguf(gguf_file: Path, out_dir: Path, dtype: Annotated[str, typer.Option(
        help="dtype of the saved weights: float32 or bfloat16")] = "float32") -> None:
    """Convert a GGUF checkpoint (llama.cpp) into a Hugging Face folder a job's `model.path` can name.
    The conversion loads torch and transformers, so it runs as its own process (`python -m trainer.gguf`)."""
    done = subprocess.run([sys.executable, "-m", "trainer.gguf", str(gguf_file), str(out_dir), "--dtype", dtype],
                          check=False)
    if done.returncode:
        raise typer.Exit(done.returncode)


if __name__ == "__main__":
    app()
