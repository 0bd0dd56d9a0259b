"""Flywheel vs TRL's GRPOTrainer on the same CPU job: same model, prompts, reward, group size,
batch, token budget and learning rate. Prints generated tokens/s, seconds per step (Flywheel's by
phase), the mean reward over the first and last steps, and the ratios.

    python bench/grpo_vs_trl.py                      # the tiny model: Flywheel (HF engine) vs TRL
    python bench/grpo_vs_trl.py --hidden 64 --steps 30
    python bench/grpo_vs_trl.py --model real         # SmolLM2-135M-Instruct (`make real-model`),
                                                     # Flywheel with vLLM, with the HF engine, and TRL
    python bench/grpo_vs_trl.py --model real --only flywheel-vllm --only flywheel-async \
        --only flywheel-lora --only flywheel-best --only trl --only trl-lora

Configurations: `flywheel-vllm` (vLLM rollouts, synchronous, full weights, float32), `flywheel`
(the HF engine), `flywheel-async` (vLLM, `rollout.max_staleness = 1`), `flywheel-lora` (vLLM,
LoRA rank 16 on every linear layer of the blocks, `--lora-lr`), `flywheel-bf16` (vLLM,
`model.dtype = bfloat16`), `flywheel-best` (vLLM, async and LoRA), `flywheel-lora-bf16` and
`flywheel-best-bf16` (the same in bfloat16), `trl` and `trl-lora` (TRL's GRPOTrainer, full
weights or its own peft LoRA with the same rank, targets and learning rate), `trl-bf16` and
`trl-lora-bf16` (TRL with the model loaded in bfloat16 and `bf16=True`).

Step times exclude the first step of each (start-up, lazy initialisation); wall time includes
everything from the call to the return, Ray, DeepSpeed and vLLM start-up included. Runs alternate
their order across repeats against drift; the median run (by s/step) of each is reported.
"""

from __future__ import annotations

import argparse
import math
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


def matmul_peak_flops(dtype: str, size: int = 2048, repeats: int = 5) -> float:
    """This machine's best FLOP/s in `dtype` on every core for a square `F.linear`, the call every
    layer of the learner makes (the learner's ceiling). Not `a @ b`: on a CPU without BF16
    instructions torch's plain bf16 matmul is ~15× slower than the oneDNN path `linear` takes."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count() or 1)
    x = torch.randn(size, size, dtype=getattr(torch, dtype))
    w = torch.randn(size, size, dtype=getattr(torch, dtype))
    F.linear(x, w)  # warm up
    best = min(_timed(lambda: F.linear(x, w)) for _ in range(repeats))
    return 2 * size**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def parameter_count(model: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model.glob("*.safetensors"):
        with safe_open(path, "pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return total


def prompt_tokens_mean(model: Path) -> float:
    from transformers import AutoTokenizer

    from environments import build

    tok = AutoTokenizer.from_pretrained(model)
    tasks = build("dataset", {"train": str(DATA)}).tasks("train")
    return statistics.fmean(len(tok.apply_chat_template(t.prompt, add_generation_prompt=True, tokenize=True,
                                                        return_dict=True)["input_ids"]) for t in tasks)


def summarise(step_seconds: list[float], tokens: list[float], rewards: list[float], wall: float) -> dict:
    steady, ends = slice(1, None), max(1, min(5, len(rewards) // 3))
    return {
        "tokens_per_s": sum(tokens[steady]) / sum(step_seconds[steady]),
        "s_per_step": statistics.fmean(step_seconds[steady]),
        "reward_first": statistics.fmean(rewards[:ends]),
        "reward_last": statistics.fmean(rewards[-ends:]),
        "wall_s": wall,
    }


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora_spec(a) -> dict:
    return {"rank": 16, "alpha": 32.0, "target_modules": LORA_TARGETS}


def run_flywheel(model: Path, out: Path, a, engine: str = "hf", max_staleness: int = 0, lora: bool = False,
                 dtype: str = "float32") -> dict:
    from trainer.loop import train
    from trainer.spec import parse_spec

    spec = parse_spec({
        "name": "bench", "output_dir": str(out), "model": {"path": str(model), "dtype": dtype},
        "environment": {"name": "dataset", "config": {"train": str(DATA)}},
        "rewards": [{"import_path": REWARD_PATH}],
        "algorithm": {"type": "grpo", "group_size": a.group, "clip_eps_high": 0.28, "loss_agg": "token_mean"},
        "rollout": {"engine": engine, "workers": a.workers, "prompts_per_step": a.prompts,
                    "max_new_tokens": a.tokens, "vllm": {"max_model_len": 512}, "max_staleness": max_staleness},
        "learner": {"ranks": a.ranks, "zero_stage": a.zero_stage, "lr": a.lora_lr if lora else a.lr,
                    "micro_batch": a.prompts * a.group // a.ranks, "lora": lora_spec(a) if lora else None},
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
    out["waits"] = {k: statistics.fmean(m[f"time/{k}"] for m in h[1:]) for k in ("learner_wait", "worker_wait")}
    # The learner's work: forward and backward over every prompt and completion token, 6 N per
    # token with full weights, 4 N with LoRA (no weight gradients for the frozen base).
    sequence_tokens = [(a.prompt_tokens + m["response/length_mean"]) * a.prompts * a.group for m in h[1:]]
    out["learner_flops"] = (4 if lora else 6) * a.params * sum(sequence_tokens) / sum(m["time/learn"] for m in h[1:])
    out["dtype"] = dtype
    return out


def run_trl(model: Path, out: Path, a, lora: bool = False, dtype: str = "float32") -> dict:
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
        temperature=1.0, seed=0, bf16=dtype == "bfloat16", disable_tqdm=True,
    )
    start = time.perf_counter()
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
        config.learning_rate = a.lora_lr
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
    trainer = GRPOTrainer(model=policy, reward_funcs=[digit_share],
                          args=config, train_dataset=dataset, processing_class=AutoTokenizer.from_pretrained(model),
                          callbacks=[Clock()], peft_config=peft_config)
    trainer.train()
    wall = time.perf_counter() - start
    tokens = [log["completions/mean_length"] * a.prompts * a.group for log in logs]
    out = summarise(times, tokens, [log["reward"] for log in logs], wall)
    out["dtype"] = dtype
    return out


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
    p.add_argument("--lora-lr", type=float, default=None, help="LoRA runs' (default: 3e-2 tiny, 1e-4 real)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--zero-stage", type=int, default=2)
    p.add_argument("--only", choices=list(RUNNERS), action="append", default=None, help="repeatable")
    p.add_argument("--repeats", type=int, default=None, help="runs of each (default: 3 tiny, 2 real)")
    a = p.parse_args()
    real = a.model == "real"
    for name, tiny, big in (("steps", 30, 8), ("group", 8, 4), ("tokens", 16, 32), ("lr", 3e-3, 1e-5),
                            ("lora_lr", 3e-2, 1e-4), ("repeats", 3, 2)):
        if getattr(a, name) is None:
            setattr(a, name, big if real else tiny)

    default = ["flywheel-vllm", "flywheel", "trl"] if real else ["flywheel", "trl"]
    names = [n for n in RUNNERS if n in (a.only or default)]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        if real:
            if not (REAL_MODEL / "config.json").exists():
                subprocess.run(["make", "--no-print-directory", "real-model"], cwd=ROOT, check=True)
            model, about = REAL_MODEL, "SmolLM2-135M-Instruct (30 layers, hidden 576, float32)"
        else:
            model = build_tiny_model(Path(tmp) / "model", corpus_lines(DATA), hidden=a.hidden, layers=a.layers)
            about = f"tiny, hidden {a.hidden} × {a.layers} layers"
        a.params, a.prompt_tokens = parameter_count(model), prompt_tokens_mean(model)
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
    "flywheel-async": lambda model, out, a: run_flywheel(model, out, a, engine="vllm", max_staleness=1),
    "flywheel-lora": lambda model, out, a: run_flywheel(model, out, a, engine="vllm", lora=True),
    "flywheel-bf16": lambda model, out, a: run_flywheel(model, out, a, engine="vllm", dtype="bfloat16"),
    "flywheel-best": lambda model, out, a: run_flywheel(model, out, a, engine="vllm", max_staleness=1, lora=True),
    "flywheel-lora-bf16": lambda model, out, a: run_flywheel(model, out, a, engine="vllm", lora=True, dtype="bfloat16"),
    "flywheel-best-bf16": lambda model, out, a: run_flywheel(model, out, a, engine="vllm", max_staleness=1,
                                                             lora=True, dtype="bfloat16"),
    "trl": run_trl,
    "trl-lora": lambda model, out, a: run_trl(model, out, a, lora=True),
    "trl-bf16": lambda model, out, a: run_trl(model, out, a, dtype="bfloat16"),
    "trl-lora-bf16": lambda model, out, a: run_trl(model, out, a, lora=True, dtype="bfloat16"),
}


def report(runs: dict[str, list[dict]], a, about: str) -> None:
    results = {n: sorted(rs, key=lambda r: r["s_per_step"])[len(rs) // 2] for n, rs in runs.items()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
    print(f"job: {about}; {a.prompts} prompts × {a.group} completions, {a.tokens} new tokens, lr {a.lr:g}, "
          f"{a.steps} steps; flywheel: {a.workers} rollout workers, {a.ranks} learner ranks "
          f"('flywheel' is the HF engine)")
    print(f"median of {a.repeats} runs each (s/step of every run: "
          + "; ".join(f"{n} " + " ".join(f"{r['s_per_step']:.3f}" for r in rs) for n, rs in runs.items()) + ")")
    print(f"{'':20}{'tokens/s':>10}{'rollout tok/s':>15}{'s/step':>9}{'reward first':>14}{'reward last':>13}"
          f"{'wall s':>9}")
    for name, r in results.items():
        rollout = f"{r['rollout_tokens_per_s']:.0f}" if "rollout_tokens_per_s" in r else "-"
        print(f"{name:20}{r['tokens_per_s']:>10.0f}{rollout:>15}{r['s_per_step']:>9.3f}{r['reward_first']:>14.3f}"
              f"{r['reward_last']:>13.3f}{r['wall_s']:>9.1f}")
    for name, r in results.items():
        if "phases" in r:
            print(f"{name} seconds per step by phase: " + ", ".join(f"{k} {v:.3f}" for k, v in r["phases"].items())
                  + "; waits: " + ", ".join(f"{k} {v:.3f}" for k, v in r["waits"].items())
                  + f"; rollout-learner logprob mismatch (mean, worst step) {r['mismatch']:.2e}")
    peaks = {d: matmul_peak_flops(d) for d in sorted({r["dtype"] for r in results.values() if "dtype" in r})}
    for name, r in results.items():
        if "learner_flops" in r:
            peak = peaks[r["dtype"]]
            print(f"{name} learner: {r['learner_flops'] / 1e9:.1f} GFLOP/s achieved; matmul peak "
                  f"{peak / 1e9:.1f} GFLOP/s ({r['dtype']}, {os.cpu_count()} threads): {r['learner_flops'] / peak:.0%}")
    if {"flywheel-vllm", "flywheel"} <= results.keys():
        v, h = results["flywheel-vllm"], results["flywheel"]
        print(f"ratio vllm/hf engine: rollout tokens/s {v['rollout_tokens_per_s'] / h['rollout_tokens_per_s']:.2f}×, "
              f"s/step {h['s_per_step'] / v['s_per_step']:.2f}× faster")
    for name, peer in (("flywheel-vllm", "trl"), ("flywheel", "trl"), ("flywheel-async", "flywheel-vllm"),
                       ("flywheel-lora", "flywheel-vllm"), ("flywheel-bf16", "flywheel-vllm"),
                       ("flywheel-lora", "trl-lora"), ("flywheel-best", "trl"), ("flywheel-best", "trl-lora"),
                       ("flywheel-lora-bf16", "flywheel-lora"), ("flywheel-best-bf16", "flywheel-best"),
                       ("flywheel-lora-bf16", "trl"), ("flywheel-best-bf16", "trl"),
                       ("flywheel-lora-bf16", "trl-lora-bf16"), ("flywheel-best-bf16", "trl-lora-bf16"),
                       ("flywheel-lora-bf16", "trl-bf16"), ("flywheel-best-bf16", "trl-bf16"),
                       ("trl-bf16", "trl")):
        if {name, peer} <= results.keys():
            fw, other = results[name], results[peer]
            print(f"ratio {name}/{peer}: tokens/s {fw['tokens_per_s'] / other['tokens_per_s']:.2f}×, "
                  f"s/step {other['s_per_step'] / fw['s_per_step']:.2f}× faster, reward last "
                  f"{fw['reward_last']:.3f} vs {other['reward_last']:.3f}")


if __name__ == "__main__":
    main()
