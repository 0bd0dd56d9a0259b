"""Generation engines behind the rollout workers.

An engine turns prompt token ids into sampled completions with the per-token log-probabilities
of the distribution it sampled from (after temperature and top-p), and takes new weights in
place. `HFEngine` (transformers `generate`) runs on CPU or GPU; a vLLM engine slots in behind
the same three methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class Completion:
    """One sampled completion. `token_ids` include the closing EOS when the model emitted one."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    truncated: bool


class Engine(Protocol):
    def generate(self, prompts_ids: list[list[int]], n: int, sampling: SamplingParams,
                 seed: int) -> list[list[Completion]]: ...

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None: ...

    def tokenizer(self) -> Any: ...


class HFEngine:
    """Batched sampling with `transformers` generate; logprobs from the processed scores."""

    def __init__(self, model_path: str, dtype: str = "float32", device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tok = AutoTokenizer.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.eos_ids = set(self._eos_ids())

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self._tok.eos_token_id
        return list(eos) if isinstance(eos, list | tuple) else [eos]

    def tokenizer(self):
        return self._tok

    @torch.no_grad()
    def generate(self, prompts_ids: list[list[int]], n: int, sampling: SamplingParams,
                 seed: int) -> list[list[Completion]]:
        pad = self._tok.pad_token_id
        width = max(len(p) for p in prompts_ids)
        # Left padding keeps every prompt's last token at the same position for generation.
        input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts_ids], device=self.device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts_ids], device=self.device)
        torch.manual_seed(seed)
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention, do_sample=True, num_return_sequences=n,
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=0, pad_token_id=pad, eos_token_id=sorted(self.eos_ids),
            output_scores=True, return_dict_in_generate=True,
        )
        new_tokens = out.sequences[:, width:].tolist()
        logprobs = self.model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True).tolist()
        groups: list[list[Completion]] = [[] for _ in prompts_ids]
        for row, (tokens, lps) in enumerate(zip(new_tokens, logprobs, strict=True)):
            end = next((i + 1 for i, t in enumerate(tokens) if t in self.eos_ids), None)
            truncated = end is None
            end = len(tokens) if truncated else end
            text = self._tok.decode(tokens[:end], skip_special_tokens=True)
            groups[row // n].append(Completion(tokens[:end], lps[:end], text, truncated))
        return groups

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)


ENGINES = {"hf": HFEngine}


def build_engine(name: str, model_path: str, dtype: str) -> Engine:
    if name not in ENGINES:
        raise ValueError(f"unknown rollout engine {name!r}; valid: {', '.join(ENGINES)}")
    return ENGINES[name](model_path, dtype)
