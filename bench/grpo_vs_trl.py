"""Flywheel vs TRL's GRPOTrainer on the same CPU job: same model, prompts, reward, group size,
batch, token budget and learning rate. Prints generated tokens/s, seconds per step (Flywheel's by
phase), the mean reward over the first and last steps, and the ratios.

    python bench/grpo_vs_trl.py                      # the tiny model: Flywheel (HF engine) vs TRL
    python bench/grpo_vs_trl.py --hidden 64 --steps 30
    python bench/grpo_vs_trl.py --model real         # SmolLM2-135M-Instruct (`make real-model`),
                                                     # Flywheel with vLLM, with the HF engine, and TRL

Step times exclude the first step of each (start-up, lazy initialisation); wall time includes
everything from the call to the return, Ray, DeepSpeed and vLLM start-up included. Runs alternate
their order across repeats against drift; the median run (by s/step) of each is reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
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
REAL_MODEL = ROOT / "runs" / "smollm2-135m-instruct"
REWARD_PATH = "tests.fixtures.trl_rewards:digit_share"


def summarise(step_seconds: list[float], tokens: list[float], rewards: list[float], wall: float) -> dict:
    steady, ends = slice(1, None), max(1, min(5, len(rewards) // 3))
    return {
        "tokens_per_s": sum(tokens[steady]) / sum(step_seconds[steady]),
        "s_per_step": statistics.fmean(step_seconds[steady]),
        "reward_first": statistics.fmean(rewards[:ends]),
        "reward_last": statistics.fmean(rewards[-ends:]),
        "wall_s": wall,
    }


def run_flywheel(model: Path, out: Path, a, engine: str = "hf") -> dict:
    from trainer.loop import train
    from trainer.spec import parse_spec

    spec = parse_spec({
        "name": "bench", "output_dir": str(out), "model": {"path": str(model)},
        "environment": {"name": "dataset", "config": {"train": str(DATA)}},
        "rewards": [{"import_path": REWARD_PATH}],
        "algorithm": {"type": "grpo", "group_size": a.group, "clip_eps_high": 0.28, "loss_agg": "token_mean"},
        "rollout": {"engine": engine, "workers": a.workers, "prompts_per_step": a.prompts,
                    "max_new_tokens": a.tokens, "vllm": {"max_model_len": 512}},
        "learner": {"ranks": a.ranks, "zero_stage": a.zero_stage, "lr": a.lr, "micro_batch": a.prompts * a.group // a.ranks},
        "schedule": {"steps": a.steps, "checkpoint_interval": 0, "seed": 0},
        "logging": {"wandb_mode": "disabled"},
    })
    start = time.perf_counter()
    result = train(spec, echo=lambda _: None)
    wall = time.perf_counter() - start
    h = result.history
    tokens = [m["response/length_mean"] * a.prompts * a.group for m in h]
    out = summarise([m["time/step"] for m in h], tokens, [m["reward/mean"] for m in h], wall)
    out["phases"] = {k: statistics.fmean(m[f"time/{k}"] for m in h[1:]) for k in ("rollout", "reward", "learn", "sync")}
    out["rollout_tokens_per_s"] = sum(tokens[1:]) / sum(m["time/rollout"] for m in h[1:])
    out["mismatch"] = max(m["mismatch/logprob_diff_mean"] for m in h)
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
    p.add_argument("--model", choices=["tiny", "real"], default="tiny",
                   help="tiny: a random model built here; real: SmolLM2-135M-Instruct (make real-model)")
    p.add_argument("--steps", type=int, default=None, help="default: 30 tiny, 8 real")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--group", type=int, default=None, help="default: 8 tiny, 4 real")
    p.add_argument("--tokens", type=int, default=None, help="default: 16 tiny, 32 real")
    p.add_argument("--hidden", type=int, default=128, help="the tiny model's")
    p.add_argument("--layers", type=int, default=2, help="the tiny model's")
    p.add_argument("--lr", type=float, default=None, help="default: 3e-3 tiny, 1e-5 real")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--only", choices=list(RUNNERS), action="append", default=None, help="repeatable")
    p.add_argument("--repeats", type=int, default=None, help="runs of each (default: 3 tiny, 2 real)")
    a = p.parse_args()
    real = a.model == "real"
    for name, tiny, big in (("steps", 30, 8), ("group", 8, 4), ("tokens", 16, 32), ("lr", 3e-3, 1e-5),
                            ("repeats", 3, 2)):
        if getattr(a, name) is None:
            setattr(a, name, big if real else tiny)

    names = [n for n in RUNNERS if (a.only is None and (real or n != "flywheel-vllm")) or n in (a.only or [])]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        if real:
            if not (REAL_MODEL / "config.json").exists():
                subprocess.run(["make", "--no-print-directory", "real-model"], cwd=ROOT, check=True)
            model, about = REAL_MODEL, "SmolLM2-135M-Instruct (30 layers, hidden 576, float32)"
        else:
            model = build_tiny_model(Path(tmp) / "model", corpus_lines(DATA), hidden=a.hidden, layers=a.layers)
            about = f"tiny, hidden {a.hidden} × {a.layers} layers"
        for i in range(a.repeats):
            for name in names if i % 2 == 0 else names[::-1]:  # alternate the order against drift
                runs[name].append(RUNNERS[name](model, Path(tmp) / f"{name}{i}", a))
                if name.startswith("flywheel"):
                    import ray

                    ray.shutdown()  # no idle Ray processes under the next trainer
    report(runs, a, about)


RUNNERS = {
    "flywheel-vllm": lambda model, out, a: run_flywheel(model, out, a, engine="vllm"),
    "flywheel": run_flywheel,
    "trl": run_trl,
}


def report(runs: dict[str, list[dict]], a, about: str) -> None:
    results = {n: sorted(rs, key=lambda r: r["s_per_step"])[len(rs) // 2] for n, rs in runs.items()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"job: {about}; {a.prompts} prompts × {a.group} completions, {a.tokens} new tokens, lr {a.lr:g}, "
          f"{a.steps} steps; flywheel: {a.workers} rollout workers, {a.ranks} learner ranks "
          f"('flywheel' is the HF engine)")
    print(f"median of {a.repeats} runs each (s/step of every run: "
          + "; ".join(f"{n} " + " ".join(f"{r['s_per_step']:.3f}" for r in rs) for n, rs in runs.items()) + ")")
    print(f"{'':14}{'tokens/s':>10}{'rollout tok/s':>15}{'s/step':>9}{'reward first':>14}{'reward last':>13}"
          f"{'wall s':>9}")
    for name, r in results.items():
        rollout = f"{r['rollout_tokens_per_s']:.0f}" if "rollout_tokens_per_s" in r else "-"
        print(f"{name:14}{r['tokens_per_s']:>10.0f}{rollout:>15}{r['s_per_step']:>9.3f}{r['reward_first']:>14.3f}"
              f"{r['reward_last']:>13.3f}{r['wall_s']:>9.1f}")
    for name, r in results.items():
        if "phases" in r:
            print(f"{name} seconds per step by phase: " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
                  + f"; rollout-learner logprob mismatch (mean, worst step) {r['mismatch']:.2e}")
    if {"flywheel-vllm", "flywheel"} <= results.keys():
        v, h = results["flywheel-vllm"], results["flywheel"]
        print(f"ratio vllm/hf engine: rollout tokens/s {v['rollout_tokens_per_s'] / h['rollout_tokens_per_s']:.2f}×, "
              f"s/step {h['s_per_step'] / v['s_per_step']:.2f}× faster")
    for name in ("flywheel-vllm", "flywheel"):
        if {name, "trl"} <= results.keys():
            fw, trl = results[name], results["trl"]
            print(f"ratio {name}/trl: tokens/s {fw['tokens_per_s'] / trl['tokens_per_s']:.2f}×, "
                  f"s/step {trl['s_per_step'] / fw['s_per_step']:.2f}× faster")


if __name__ == "__main__":
    main()
