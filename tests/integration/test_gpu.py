"""GPU path: the HF engine samples on CUDA and its logprobs agree with a recomputation there.
Skipped where no CUDA device is present."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.algorithms.losses import token_logprobs
from trainer.learner import LearnBatch, pad_batch
from trainer.rollout.engine import HFEngine, SamplingParams

pytestmark = pytest.mark.gpu


def test_cuda_engine_logprobs_match_recomputation(tiny_model):
    engine = HFEngine(str(tiny_model), device="cuda")
    assert engine.model.device.type == "cuda"
    prompts = [[1, 2, 3, 4], [5, 6, 7]]
    groups = engine.generate(prompts, 4, SamplingParams(12, temperature=0.8), seed=0)
    flat = [(p, c) for p, g in zip(prompts, groups, strict=True) for c in g]
    batch = LearnBatch([p for p, _ in flat], [c.token_ids for _, c in flat], [c.logprobs for _, c in flat],
                       [0.0] * len(flat), [[True] * len(c.token_ids) for _, c in flat])
    input_ids, attention, mask, old, _ = (t.cuda() for t in pad_batch(batch, 0, len(flat), 0))
    model = AutoModelForCausalLM.from_pretrained(tiny_model).cuda()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1] / 0.8
    torch.testing.assert_close(token_logprobs(logits, input_ids[:, 1:])[mask], old[mask], atol=2e-3, rtol=0)
