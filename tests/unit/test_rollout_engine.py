"""The HF engine's sampled logprobs must be what the learner recomputes for the same tokens:
the policy ratio starts at exactly 1 on-policy only if the two agree."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from environments import Task
from trainer.algorithms.losses import token_logprobs
from trainer.learner import LearnBatch, pad_batch
from trainer.rollout.engine import SamplingParams
from trainer.rollout.worker import RolloutWorker

TASKS = [Task("0", [{"role": "user", "content": "How many apples?"}]),
         Task("1", [{"role": "user", "content": "Give the count of refunds as a number, please."}])]


@pytest.fixture(scope="module")
def worker(tiny_model):
    return RolloutWorker("hf", str(tiny_model), "float32")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_match_learner_recomputation(worker, tiny_model, temperature):
    samples = worker.generate(TASKS, 0, 3, SamplingParams(10, temperature), seed=1)
    assert len(samples) == 6 and [s.group for s in samples] == [0, 0, 0, 1, 1, 1]
    batch = LearnBatch([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples],
                       [s.completion.logprobs for s in samples], [0.0] * 6,
                       [[True] * len(s.completion.token_ids) for s in samples])
    input_ids, attention, mask, old, _ = pad_batch(batch, 0, 6, worker.engine.tokenizer().pad_token_id)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1] / temperature
    recomputed = token_logprobs(logits, input_ids[:, 1:])
    assert int(mask.sum()) == sum(len(s.completion.token_ids) for s in samples)
    torch.testing.assert_close(recomputed[mask], old[mask], atol=1e-4, rtol=0)


def test_completion_ends_at_eos_or_is_marked_truncated(worker):
    for s in worker.generate(TASKS, 0, 4, SamplingParams(6), seed=2):
        c = s.completion
        assert len(c.token_ids) == len(c.logprobs) <= 6
        ends_with_eos = c.token_ids[-1] in worker.engine.eos_ids
        assert c.truncated == (not ends_with_eos)


def test_same_seed_same_samples_and_weights_update(worker):
    a = worker.generate(TASKS, 0, 2, SamplingParams(8), seed=5)
    b = worker.generate(TASKS, 0, 2, SamplingParams(8), seed=5)
    assert [s.completion.token_ids for s in a] == [s.completion.token_ids for s in b]
    state = {k: torch.zeros_like(v) for k, v in worker.engine.model.state_dict().items()}
    assert worker.update_weights(state, version=3) == 3
    assert all(float(p.detach().abs().sum()) == 0 for p in worker.engine.model.parameters())
    assert worker.generate(TASKS[:1], 0, 1, SamplingParams(4), seed=0)[0].weights_version == 3
