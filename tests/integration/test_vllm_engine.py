"""The vLLM engine, for real (its CPU build), on a tiny model: seeded sampling, the logprobs the
learner recomputes, and new weights pushed into the running engine."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.actors.deepspeed_rank import micro_batch
from trainer.algorithms.losses import token_logprobs
from trainer.engines.hf import HFEngine
from trainer.types import SamplingParams, TokenBatch

PROMPTS = ["12 + 7 =", "count: 3 3 3", "9 9"]
TOLERANCE = 1e-4  # float32 on both sides; measured differences are about 1e-6


@pytest.fixture(scope="module")
def engine(vllm_tiny_model):
    from trainer.engines.vllm_engine import VLLMEngine

    return VLLMEngine(str(vllm_tiny_model), "float32", kv_cache_gb=1, max_model_len=512)


def prompt_ids(engine) -> list[list[int]]:
    tok = engine.tokenizer()
    return [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]


def recomputed(model, prompts: list[list[int]], groups, temperature: float):
    """The learner's logprobs of every sampled token, and the engine's, over the masked tokens."""
    flat = [(p, c) for p, g in zip(prompts, groups, strict=True) for c in g]
    batch = TokenBatch([p for p, _ in flat], [c.token_ids for _, c in flat], [[True] * len(c.token_ids) for _, c in flat])
    mb = micro_batch(batch, range(len(flat)), 0)
    with torch.no_grad():
        logits = model(input_ids=mb.input_ids_B_S, attention_mask=mb.attention_B_S).logits[:, mb.first:-1]
    ours = token_logprobs(logits / temperature, mb.input_ids_B_S[:, mb.first + 1:])
    return ours[mb.mask_B_T], mb.align([c.logprobs for _, c in flat])[mb.mask_B_T]


def test_same_seed_same_samples_and_a_group_of_distinct_ones(engine):
    prompts = prompt_ids(engine)
    a = engine.generate(prompts, 4, SamplingParams(10), seed=3)
    b = engine.generate(prompts, 4, SamplingParams(10), seed=3)
    c = engine.generate(prompts, 4, SamplingParams(10), seed=4)
    ids = [[s.token_ids for s in g] for g in a]
    assert ids == [[s.token_ids for s in g] for g in b] and ids != [[s.token_ids for s in g] for g in c]
    assert all(len({tuple(t) for t in g}) > 1 for g in ids)
    eos = engine.tokenizer().eos_token_id
    for s in (s for g in a for s in g):
        assert len(s.token_ids) == len(s.logprobs) and (s.truncated or s.token_ids[-1] == eos)
        assert s.truncated == (len(s.token_ids) == 10 and s.token_ids[-1] != eos)


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 1.0)])
def test_logprobs_equal_the_learners_forward(engine, vllm_tiny_model, temperature, top_p):
    prompts = prompt_ids(engine)
    groups = engine.generate(prompts, 3, SamplingParams(12, temperature, top_p), seed=1)
    model = AutoModelForCausalLM.from_pretrained(vllm_tiny_model)
    ours, theirs = recomputed(model, prompts, groups, temperature)
    torch.testing.assert_close(theirs, ours, atol=TOLERANCE, rtol=0)


def test_pushed_weights_are_the_ones_sampled_from(engine, vllm_tiny_model):
    prompts = prompt_ids(engine)
    new = HFEngine(str(vllm_tiny_model)).model
    torch.manual_seed(0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.load_weights({k: v.clone() for k, v in new.state_dict().items()})
    groups = engine.generate(prompts, 2, SamplingParams(12), seed=2)
    ours, theirs = recomputed(new, prompts, groups, 1.0)
    torch.testing.assert_close(theirs, ours, atol=TOLERANCE, rtol=0)
    old = AutoModelForCausalLM.from_pretrained(vllm_tiny_model)
    stale, _ = recomputed(old, prompts, groups, 1.0)
    assert (stale - theirs).abs().max() > 100 * TOLERANCE  # not the old weights
