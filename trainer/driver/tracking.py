"""Metrics out of a run: wandb (offline files by default) and one progress line per step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class Tracker:
    """A thin wrapper so the loop logs one dict per step and never touches wandb directly."""

    def __init__(self, logging_spec, run_dir: Path, name: str, config: dict[str, Any], resume_step: int = 0):
        self.run = None
        if logging_spec.wandb_mode == "disabled":
            return
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=logging_spec.wandb_project, name=name, dir=str(run_dir), config=config,
            mode=logging_spec.wandb_mode, reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
            tags=[f"resumed@{resume_step}"] if resume_step else None,
        )

    @property
    def location(self) -> str | None:
        """Where the run lives: its URL online, its local folder offline."""
        if self.run is None:
            return None
        return self.run.url or str(Path(self.run.dir).parent)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)


def progress_line(step: int, steps: int, m: dict[str, float]) -> str:
    """`step 3/20 | reward 0.412 | kl 0.0012 | 812 tok/s | 1.92 s (rollout 0.81 reward 0.10 …)`."""
    times = " ".join(f"{k} {m[f'time/{k}']:.2f}" for k in ("rollout", "reward", "learn", "sync"))
    failures = f" | reward failures {int(m['reward/failed'])}" if m.get("reward/failed") else ""
    if "eval/reward_mean" in m:
        failures += f" | eval reward {m['eval/reward_mean']:.3f}"
    return (f"step {step}/{steps} | reward {m['reward/mean']:.3f} | kl {m['kl']:.4f} | "
            f"{m['perf/tokens_per_s']:.0f} tok/s | {m['time/step']:.2f} s ({times}){failures}")
