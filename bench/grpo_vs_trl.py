"""Flywheel vs TRL's GRPOTrainer on the same CPU job: same tiny model, prompts, reward, group
size, batch and token budget. Prints generated tokens/s, seconds per step and the mean reward of
the last steps for each, and Flywheel's ratios to TRL.

    python bench/grpo_vs_trl.py                      # defaults below
    python bench/grpo_vs_trl.py --hidden 64 --steps 30

Step times exclude the first step of each (start-up, lazy initialisation); wall time includes
everything from the call to the return, Ray and DeepSpeed start-up included.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.fixtures.trl_rewards import digit_share  # noqa: E402  a reward written for TRL
from trainer.tiny import build_tiny_model, corpus_lines  # noqa: E402

DATA = ROOT / "configs" / "data" / "digits.jsonl"
REWARD_PATH = "tests.fixtures.trl_rewards:digit_share"


def summarise(step_seconds: list[float], tokens: list[float], rewards: list[float], wall: float) -> dict:
    steady = slice(1, None)
    return {
        "tokens_per_s": sum(tokens[steady]) / sum(step_seconds[steady]),
        "s_per_step": statistics.fmean(step_seconds[steady]),
        "reward_last5": statistics.fmean(rewards[-5:]),
        "reward_first5": statistics.fmean(rewards[:5]),
        "wall_s": wall,
    }


def run_flywheel(model: Path, out: Path, a) -> dict:
    from trainer.loop import train
    from trainer.spec import parse_spec

    spec = parse_spec({
        "name": "bench", "output_dir": str(out), "model": {"path": str(model)},
        "environment": {"name": "dataset", "config": {"train": str(DATA)}},
        "rewards": [{"import_path": REWARD_PATH}],
        "algorithm": {"type": "grpo", "group_size": a.group, "clip_eps_high": 0.28, "loss_agg": "token_mean"},
        "rollout": {"workers": a.workers, "prompts_per_step": a.prompts, "max_new_tokens": a.tokens},
        "learner": {"ranks": a.ranks, "zero_stage": a.zero_stage, "lr": a.lr, "micro_batch": a.prompts * a.group // a.ranks},
        "schedule": {"steps": a.steps, "checkpoint_interval": 0, "seed": 0},
        "logging": {"wandb_mode": "disabled"},
    })
    start = time.perf_counter()
    result = train(spec, echo=lambda _: None)
    wall = time.perf_counter() - start
    h = result.history
    out = summarise([m["time/step"] for m in h], [m["response/length_mean"] * a.prompts * a.group for m in h],
                    [m["reward/mean"] for m in h], wall)
    out["phases"] = {k: statistics.fmean(m[f"time/{k}"] for m in h[1:]) for k in ("rollout", "reward", "learn", "sync")}
    return out


def run_trl(model: Path, out: Path, a) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from environments import build

    torch.manual_seed(0)
    tasks = build("dataset", {"train": str(DATA)}).tasks("train")
    dataset = Dataset.from_list([{"prompt": t.prompt} for t in tasks])
    times, logs = [], []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                history.append(dict(logs))

    history = logs
    config = GRPOConfig(
        output_dir=str(out), use_cpu=True, report_to="none", save_strategy="no", logging_steps=1,
        max_steps=a.steps, per_device_train_batch_size=a.prompts * a.group, num_generations=a.group,
        gradient_accumulation_steps=1, max_completion_length=a.tokens, learning_rate=a.lr,
        lr_scheduler_type="constant", warmup_steps=0, epsilon=0.2, epsilon_high=0.28, loss_type="dapo", beta=0.0,
        temperature=1.0, seed=0, bf16=False, disable_tqdm=True,
    )
    start = time.perf_counter()
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(model), reward_funcs=[digit_share],
                          args=config, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model),
                          callbacks=[Clock()])
    trainer.train()
    wall = time.perf_counter() - start
    tokens = [log["completions/mean_length"] * a.prompts * a.group for log in logs]
    return summarise(times, tokens, [log["reward"] for log in logs], wall)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--only", choices=["flywheel", "trl"], default=None)
    p.add_argument("--repeats", type=int, default=3, help="runs of each; the median run is reported")
    a = p.parse_args()

    runners = {"flywheel": run_flywheel, "trl": run_trl}
    names = [n for n in runners if a.only in (None, n)]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "model", corpus_lines(DATA), hidden=a.hidden, layers=a.layers)
        for i in range(a.repeats):
            for name in names if i % 2 == 0 else names[::-1]:  # alternate the order against drift
                runs[name].append(runners[name](model, Path(tmp) / f"{name}{i}", a))
                if name == "flywheel":
                    import ray

                    ray.shutdown()  # no idle Ray processes under the other trainer
    results = {n: sorted(rs, key=lambda r: r["s_per_step"])[len(rs) // 2] for n, rs in runs.items()}

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"job: hidden {a.hidden} × {a.layers} layers, {a.prompts} prompts × {a.group} completions, "
          f"{a.tokens} new tokens, {a.steps} steps; flywheel: {a.workers} rollout workers, {a.ranks} learner ranks")
    print(f"median of {a.repeats} runs each (s/step of every run: "
          + "; ".join(f"{n} " + " ".join(f"{r['s_per_step']:.3f}" for r in rs) for n, rs in runs.items()) + ")")
    print(f"{'':10}{'tokens/s':>10}{'s/step':>9}{'reward first5':>15}{'reward last5':>14}{'wall s':>9}")
    for name, r in results.items():
        print(f"{name:10}{r['tokens_per_s']:>10.0f}{r['s_per_step']:>9.3f}{r['reward_first5']:>15.3f}"
              f"{r['reward_last5']:>14.3f}{r['wall_s']:>9.1f}")
    if "flywheel" in results:
        print("flywheel seconds per step by phase: "
              + ", ".join(f"{k} {v:.3f}" for k, v in results["flywheel"]["phases"].items()))
    if len(results) == 2:
        fw, trl = results["flywheel"], results["trl"]
        print(f"ratio flywheel/trl: tokens/s {fw['tokens_per_s'] / trl['tokens_per_s']:.2f}×, "
              f"s/step {fw['s_per_step'] / trl['s_per_step']:.2f}×")


if __name__ == "__main__":
    main()
