"""The HF engine: batched sampling on a `transformers` model and its KV cache, on CPU or GPU
(the toy-model fallback to vLLM, and the engine whose logprobs the tests hold the learner to)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from trainer.engines.head import contiguous_head_input
from trainer.types import Completion, SamplingParams


class HFEngine:
    """Batched sampling on a `transformers` model with its KV cache.

    The decode loop is written out rather than delegated to `generate`: for the small models of
    CPU runs, `generate`'s per-token machinery (logits processors, stopping criteria, score
    bookkeeping) costs as much as the forward pass. Each step samples from
    softmax(top_p(logits / temperature)) and records the log-probability of the sampled token
    under exactly that distribution.
    """

    def __init__(self, model_path: str, dtype: str = "float32", device: str | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self._tok = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model = contiguous_head_input(model).to(self.device)
        self.model.eval()
        self.eos_ids = set(self._eos_ids())

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self._tok.eos_token_id
        return list(eos) if isinstance(eos, list | tuple) else [eos]

    def tokenizer(self):
        return self._tok

    @torch.inference_mode()
    def generate(self, prompts_ids: list[list[int]], n: int, sampling: SamplingParams,
                 seed: int, on_step: Callable[[list[int], list[float]], None] | None = None) -> list[list[Completion]]:
        """`on_step`, if given, is called after each decoding step with every row's new token and
        its logprob (for streaming)."""
        tokens, logprobs = self._sample(prompts_ids, n, sampling, seed, on_step)
        groups: list[list[Completion]] = [[] for _ in prompts_ids]
        for row, (toks, lps) in enumerate(zip(tokens.tolist(), logprobs.tolist(), strict=True)):
            end = next((i + 1 for i, t in enumerate(toks) if t in self.eos_ids), None)
            truncated = end is None
            end = len(toks) if truncated else end
            text = self._tok.decode(toks[:end], skip_special_tokens=True)
            groups[row // n].append(Completion(toks[:end], lps[:end], text, truncated))
        return groups

    def _sample(self, prompts_ids: list[list[int]], n: int, sampling: SamplingParams,
                seed: int, on_step=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and logprobs, [prompts * n, steps]; rows after their EOS hold padding."""
        from transformers import DynamicCache

        pad, dev = self._tok.pad_token_id, self.device
        width = max(len(p) for p in prompts_ids)
        # Left padding puts every prompt's last token in the last column; positions skip the pads.
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts_ids], device=dev).repeat_interleave(n, 0)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts_ids],
                                 device=dev).repeat_interleave(n, 0)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        generator = torch.Generator(device=dev).manual_seed(seed)
        eos = torch.tensor(sorted(self.eos_ids), device=dev)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=dev)
        cache, tokens, logprobs = DynamicCache(), [], []
        for step in range(sampling.max_new_tokens):
            out = self.model(input_ids=ids, attention_mask=attention, position_ids=positions,
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            logp = processed_logprobs(out.logits[:, -1].float(), sampling.temperature, sampling.top_p)
            # Exponential race: argmax(logp - log E), E ~ Exp(1), is a draw from softmax(logp).
            race = torch.empty_like(logp).exponential_(generator=generator).log_()
            token = torch.where(done, pad, (logp - race).argmax(-1))
            tokens.append(token)
            logprobs.append(logp.gather(-1, token[:, None]).squeeze(1))
            if on_step is not None:
                on_step(token.tolist(), logprobs[-1].tolist())
            done |= torch.isin(token, eos)
            if step == sampling.max_new_tokens - 1 or bool(done.all()):
                break
            ids, positions = token[:, None], positions[:, -1:] + 1
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=-1)
        return torch.stack(tokens, 1), torch.stack(logprobs, 1)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)


def processed_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """log softmax of logits / temperature restricted to the top-p nucleus (-inf outside it).

    The nucleus is the smallest set of most likely tokens whose probability reaches top_p; the
    most likely token is always in it.
    """
    logits = logits / temperature
    if top_p >= 1.0:
        return logits.log_softmax(-1)
    sorted_logits, order = logits.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    outside = (probs.cumsum(-1) - probs) >= top_p
    sorted_logits = sorted_logits.masked_fill(outside, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits).log_softmax(-1)
