"""Generation engines, shared by the rollout workers (one per worker actor) and the model server
(`serving/`).

An engine turns prompt token ids into sampled completions with the per-token log-probabilities
of the distribution it sampled from (after temperature and top-p), and takes new weights in
place. `HFEngine` (`hf.py`, a `transformers` model and its KV cache) runs on CPU or GPU;
`VLLMEngine` (`vllm_engine.py`) is the same three methods over vLLM, which is imported only when
that engine is built.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from trainer.engines.hf import HFEngine
from trainer.types import Completion, SamplingParams

__all__ = ["ENGINES", "Engine", "HFEngine", "build_engine"]


class Engine(Protocol):
    def generate(self, prompts_ids: list[list[int]], n: int, sampling: SamplingParams,
                 seed: int) -> list[list[Completion]]: ...

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None: ...

    def tokenizer(self) -> Any: ...


ENGINES = ("hf", "vllm")


def build_engine(name: str, model_path: str, dtype: str, vllm: dict | None = None) -> Engine:
    """The engine `rollout.engine` names; `vllm` holds `rollout.vllm`'s settings."""
    if name == "hf":
        return HFEngine(model_path, dtype)
    if name == "vllm":
        from trainer.engines.vllm_engine import VLLMEngine  # vLLM is imported here only

        return VLLMEngine(model_path, dtype, **(vllm or {}))
    raise ValueError(f"unknown rollout engine {name!r}; valid: {', '.join(ENGINES)}")
