"""GPU path: the HF engine samples on CUDA and its logprobs agree with a recomputation there.
Skipped where no CUDA device is present."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.actors.deepspeed_rank import micro_batch
from trainer.algorithms.losses import token_logprobs
from trainer.engines.hf import HFEngine
from trainer.types import SamplingParams, TokenBatch

pytestmark = pytest.mark.gpu


def test_cuda_engine_logprobs_match_recomputation(tiny_model):
    engine = HFEngine(str(tiny_model), device="cuda")
    assert engine.model.device.type == "cuda"
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    groups = engine.generate(prompts, 4, SamplingParams(12, temperature=0.8), seed=0)
    flat = [(p, c) for p, g in zip(prompts, groups, strict=True) for c in g]
    batch = TokenBatch([p for p, _ in flat], [c.token_ids for _, c in flat], [[True] * len(c.token_ids) for _, c in flat])
    mb = micro_batch(batch, range(len(flat)), 0, "cuda")
    mask, old = mb.mask_B_T, mb.align([c.logprobs for _, c in flat])
    model = AutoModelForCausalLM.from_pretrained(tiny_model).cuda()
    with torch.no_grad():
        logits = model(input_ids=mb.input_ids_B_S, attention_mask=mb.attention_B_S).logits[:, mb.first:-1] / 0.8
    torch.testing.assert_close(token_logprobs(logits, mb.input_ids_B_S[:, mb.first + 1:])[mask], old[mask],
                               atol=2e-3, rtol=0)
