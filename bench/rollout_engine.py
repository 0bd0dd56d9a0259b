"""The rollout engine's decode loop against transformers' `generate` on the same model and
prompts, single-threaded: seconds per call for `--prompts` × `--n` completions of `--tokens`.

    python bench/rollout_engine.py --hidden 128 --layers 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.engines.hf import HFEngine  # noqa: E402
from trainer.tiny import build_tiny_model, corpus_lines  # noqa: E402
from trainer.types import SamplingParams  # noqa: E402


def with_generate(engine: HFEngine, prompts: list[list[int]], n: int, tokens: int, seed: int) -> None:
    pad = engine.tokenizer().pad_token_id
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    torch.manual_seed(seed)
    out = engine.model.generate(input_ids=ids, attention_mask=attention, do_sample=True, num_return_sequences=n,
                                max_new_tokens=tokens, top_k=0, pad_token_id=pad, output_scores=True,
                                return_dict_in_generate=True, eos_token_id=sorted(engine.eos_ids))
    engine.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "m", corpus_lines(ROOT / "configs/data/digits.jsonl"),
                                 hidden=a.hidden, layers=a.layers)
        engine = HFEngine(str(model))
    tok = engine.tokenizer()
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Count to {i + 3}."}],
                                       add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
               for i in range(a.prompts)]
    sampling = SamplingParams(a.tokens)
    runs = {"generate": lambda s: with_generate(engine, prompts, a.n, a.tokens, s),
            "engine loop": lambda s: engine.generate(prompts, a.n, sampling, s)}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn(0)  # warm-up
    for r in range(a.rounds):  # interleaved against drift
        for name, fn in runs.items():
            start = time.perf_counter()
            for i in range(10):
                fn(r * 10 + i)
            times[name].append((time.perf_counter() - start) / 10)
    print(f"{a.prompts} prompts × {a.n} completions × {a.tokens} tokens, hidden {a.hidden} × {a.layers} layers, 1 thread")
    for name, ts in times.items():
        print(f"  {name:12} median {statistics.median(ts) * 1000:6.1f} ms   best {min(ts) * 1000:6.1f} ms per call")
    ratio = statistics.median(times["generate"]) / statistics.median(times["engine loop"])
    print(f"  engine loop is {ratio:.2f}× as fast as generate")


if __name__ == "__main__":
    main()
