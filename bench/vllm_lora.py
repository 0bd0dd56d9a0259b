"""How a LoRA policy should reach the vLLM rollout engine each step: as merged weights (what
Flywheel sends: the learner adds B·A into the base and the engine reloads every weight) or as
the adapter alone (the learner saves a few MB, vLLM applies it with its own LoRA kernels).

One process per way, the real model, vLLM's CPU build; per step: the learner side's work
(merge / save), the hand-over to the engine, and one batch of `--prompts` × `--n` completions of
`--tokens` on the desk's prompts. Each step's adapter is new (another random B), as after a
learner step. Both ways sample with the same seeds from the same weights, so their first step's
tokens and logprobs are compared too (the check that they are the same model).

    python bench/vllm_lora.py                     # SmolLM2-135M-Instruct (`make real-model`)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def policy(model_path: str, rank: int, step: int):
    """The base model with adapters whose B is random (seeded by the step): a trained policy."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, torch_dtype=torch.float32)
    torch.manual_seed(step)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False)
    model = get_peft_model(model, config)
    with torch.no_grad():  # peft's non-default init is large; scale it to a learner step's size
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)
    return model


def prompts(tok, count: int) -> list[list[int]]:
    from environments.support_desk.simulator import SYSTEM_PROMPT, make_ticket

    return [tok.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT},
                                     {"role": "user", "content": make_ticket(i).opening}],
                                    add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for i in range(count)]


def run_one(way: str, a: argparse.Namespace) -> dict:
    """One way, in this process: `--steps` steps; returns the per-phase seconds and step 1's samples."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    from trainer.actors.lora import merged_state_dict
    from trainer.engines.vllm_engine import VLLMEngine

    t0 = time.perf_counter()  # the rollout workers' engine, with vLLM's LoRA support on for the adapter
    lora = {"enable_lora": True, "max_lora_rank": a.rank, "max_loras": 1} if way == "adapter" else {}
    engine = VLLMEngine(a.model, kv_cache_gb=1.0, max_model_len=2048, **lora)
    llm = engine.llm
    start = time.perf_counter() - t0
    batch = [TokensPrompt(prompt_token_ids=p) for p in prompts(llm.get_tokenizer(), a.prompts) for _ in range(a.n)]
    params = [SamplingParams(temperature=1.0, max_tokens=a.tokens, seed=k, logprobs=0, ignore_eos=True)
              for k in range(len(batch))]
    phases: dict[str, list[float]] = {"learner": [], "hand_over": [], "generate": []}
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for step in range(a.steps):
            model = policy(a.model, a.rank, step)
            t = time.perf_counter()
            if way == "merged":
                state = merged_state_dict(model)
            else:
                path = Path(tmp) / f"step_{step}"
                model.save_pretrained(path)
            phases["learner"].append(time.perf_counter() - t)
            t = time.perf_counter()
            if way == "merged":
                engine.load_weights(state)
                request = None
            else:
                request = LoRARequest(f"policy-{step}", step + 1, str(path))
            phases["hand_over"].append(time.perf_counter() - t)
            t = time.perf_counter()  # for the adapter, vLLM loads it on the first request that names it
            outs = llm.generate(batch, params, use_tqdm=False, lora_request=request)
            phases["generate"].append(time.perf_counter() - t)
            if first is None:
                first = [[list(o.outputs[0].token_ids), [next(iter(lp.values())).logprob for lp in o.outputs[0].logprobs]]
                         for o in outs]
    return {"start_s": start, "phases": phases, "first": first}


def compare(a: list, b: list) -> tuple[float, float]:
    """Share of completions sampled identically, and the mean |Δ logprob| over their tokens."""
    same = [(x, y) for x, y in zip(a, b, strict=True) if x[0] == y[0]]
    diffs = [abs(p - q) for x, y in same for p, q in zip(x[1], y[1], strict=True)]
    return len(same) / len(a), (statistics.fmean(diffs) if diffs else float("nan"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "runs" / "smollm2-135m-instruct"))
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--way", choices=["merged", "adapter"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.way:
        print(json.dumps(run_one(a.way, a)))
        return
    results = {}
    for way in ("merged", "adapter"):
        args = [sys.executable, __file__, "--way", way, "--model", a.model, "--rank", str(a.rank),
                "--prompts", str(a.prompts), "--n", str(a.n), "--tokens", str(a.tokens), "--steps", str(a.steps)]
        done = subprocess.run(args, capture_output=True, text=True, check=True)
        results[way] = json.loads(done.stdout.strip().splitlines()[-1])
    tokens = a.prompts * a.n * a.tokens
    print(f"{a.model}: LoRA rank {a.rank} on {', '.join(TARGETS)}; {a.prompts} prompts × {a.n} completions "
          f"× {a.tokens} tokens per step; median of steps 2-{a.steps} (step 1 warms up)")
    print(f"{'way':<9} {'engine start s':>14} {'learner s':>10} {'hand-over s':>12} {'generate s':>11} "
          f"{'tokens/s':>9} {'step s':>7}")
    steps = {}
    for way, r in results.items():
        med = {k: statistics.median(v[1:] or v) for k, v in r["phases"].items()}
        steps[way] = sum(med.values())
        print(f"{way:<9} {r['start_s']:>14.1f} {med['learner']:>10.2f} {med['hand_over']:>12.2f} "
              f"{med['generate']:>11.2f} {tokens / med['generate']:>9.0f} {steps[way]:>7.2f}")
    same, diff = compare(results["merged"]["first"], results["adapter"]["first"])
    print(f"adapter / merged step time: {steps['adapter'] / steps['merged']:.2f}×; step 1 sampled alike: "
          f"{same:.0%} of completions, mean |Δ logprob| on them {diff:.1e}")


if __name__ == "__main__":
    main()
