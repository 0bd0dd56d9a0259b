"""`flywheel models` and `flywheel deploy`: the registry and deployments from the command line.

    flywheel models list [--kind policy] | show MODEL
    flywheel deploy create support-agent --model MODEL [--gate gate.json]
    flywheel deploy promote support-agent MODEL      # refused with the gate's table when it regresses
    flywheel deploy rollback support-agent | show support-agent | list | events support-agent
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from service.client import check, client, console, show

models = typer.Typer(help="Trained model versions (the registry), and base models on this machine.",
                     no_args_is_help=True)
deploy = typer.Typer(help="Deployments: which model version serves, moved through an evaluation gate.",
                     no_args_is_help=True)

SHOWN = ("eval/resolved_rate", "eval/violation_rate", "eval/reward_mean", "eval/auc")


def _headline(model: dict) -> str:
    metrics = ((model.get("evaluation") or {}).get("after") or {}).get("metrics") or {}
    return " ".join(f"{k.removeprefix('eval/')} {metrics[k]:.3g}" for k in SHOWN if k in metrics)


@models.command("list")
def list_models(kind: Annotated[str | None, typer.Option(help="policy or outcome_model")] = None,
                limit: int = 50) -> None:
    with client() as c:
        page = check(c.get("/v1/models", params={k: v for k, v in {"kind": kind, "limit": limit}.items() if v}))
    table = Table("id", "name", "kind", "parent", "MB", "held-out", "created", box=box.SIMPLE_HEAD, pad_edge=False)
    for m in page["models"]:
        table.add_row(m["id"], m["name"], m["kind"], m["parent_id"] or "", f"{m['size_bytes'] / 1e6:.1f}",
                      _headline(m), m["created_at"][:19])
    show(table)


@models.command("show")
def show_model(model_id: str) -> None:
    with client() as c:
        print(json.dumps(check(c.get(f"/v1/models/{model_id}")), indent=2))


def verdict_table(verdict: dict) -> Table:
    table = Table("gate", "current", "candidate", "change", "required", "", box=box.SIMPLE_HEAD, pad_edge=False)
    for row in verdict["rows"]:
        cells = ["missing" if row[k] is None else f"{row[k]:.4g}" for k in ("current", "candidate")]
        change = "" if row["change"] is None else f"{row['change']:+.4g}"
        table.add_row(row["metric"].removeprefix("eval/"), *cells, change, row["required"],
                      "pass" if row["passed"] else "FAIL")
    return table


def _deployment_line(d: dict) -> str:
    return f"{d['name']}: serving {d['model'] or '(nothing yet)'}" + (f", before: {', '.join(d['history'])}"
                                                                       if d["history"] else "")


@deploy.command("create")
def create(name: str, model: Annotated[str | None, typer.Option(help="the model version it serves first")] = None,
           gate: Annotated[Path | None, typer.Option(help="a JSON file: {rules: [{metric, better, min_gain}], "
                                                          "ceilings: {metric: max}}")] = None) -> None:
    body = {"name": name, **({"model": model} if model else {}),
            **({"gate": json.loads(gate.read_text())} if gate else {})}
    with client() as c:
        console.print(_deployment_line(check(c.post("/v1/deployments", json=body))))


@deploy.command("promote")
def promote(name: str, model: str) -> None:
    """Serve MODEL if it passes the deployment's gate; exit 1 with the gate's table if refused."""
    with client() as c:
        r = c.post(f"/v1/deployments/{name}/promote", json={"model": model})
    verdict = r.json().get("verdict") if r.is_success else r.json().get("error", {}).get("verdict")
    if verdict:
        show(verdict_table(verdict))
    out = check(r)
    if out["evaluating"]:
        console.print(f"evaluating first, on the gate's held-out tasks: {', '.join(out['evaluating'])} "
                      "(promote again once they succeeded)")
    console.print(_deployment_line(out["deployment"]))


@deploy.command("rollback")
def rollback(name: str) -> None:
    with client() as c:
        console.print(_deployment_line(check(c.post(f"/v1/deployments/{name}/rollback"))))


@deploy.command("show")
def show_deployment(name: str) -> None:
    with client() as c:
        print(json.dumps(check(c.get(f"/v1/deployments/{name}")), indent=2))


@deploy.command("list")
def list_deployments() -> None:
    with client() as c:
        for d in check(c.get("/v1/deployments"))["deployments"]:
            console.print(_deployment_line(d))


@deploy.command("events")
def events(name: str) -> None:
    with client() as c:
        for e in check(c.get(f"/v1/deployments/{name}/events"))["events"]:
            console.print(f"{e['created_at'][:19]}  {e['kind']:12} {e['message']}")
