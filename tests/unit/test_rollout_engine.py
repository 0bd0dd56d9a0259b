"""The HF engine's sampled logprobs must be what the learner recomputes for the same tokens:
the policy ratio starts at exactly 1 on-policy only if the two agree."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from environments import Task
from trainer.actors.deepspeed_rank import micro_batch
from trainer.actors.rollout_worker import RolloutWorker
from trainer.algorithms.losses import token_logprobs
from trainer.engines.hf import processed_logprobs
from trainer.types import SamplingParams, TokenBatch

TASKS = [Task("0", [{"role": "user", "content": "How many apples?"}]),
         Task("1", [{"role": "user", "content": "Give the count of refunds as a number, please."}])]


@pytest.fixture(scope="module")
def worker(tiny_model):
    return RolloutWorker("hf", str(tiny_model), "float32")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_engine_logprobs_match_learner_recomputation(worker, tiny_model, temperature):
    samples = worker.generate(TASKS, 0, 3, SamplingParams(10, temperature), seed=1)
    assert len(samples) == 6 and [s.group for s in samples] == [0, 0, 0, 1, 1, 1]
    batch = TokenBatch([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples],
                       [[True] * len(s.completion.token_ids) for s in samples])
    mb = micro_batch(batch, range(6), worker.engine.tokenizer().pad_token_id)
    mask, old = mb.mask_B_T, mb.align([s.completion.logprobs for s in samples])
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        logits = model(input_ids=mb.input_ids_B_S, attention_mask=mb.attention_B_S).logits[:, mb.first:-1] / temperature
    recomputed = token_logprobs(logits, mb.input_ids_B_S[:, mb.first + 1:])
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


def test_top_p_keeps_the_nucleus_and_renormalises():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    logp = processed_logprobs(logits, temperature=1.0, top_p=0.75)
    # 0.5 + 0.3 reaches 0.75: the nucleus is the first two tokens, renormalised to 0.625 / 0.375.
    torch.testing.assert_close(logp.exp(), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # The most likely token always stays, however small top_p is.
    assert processed_logprobs(logits, 1.0, 0.01).exp()[0, 0] == 1.0
    torch.testing.assert_close(processed_logprobs(logits, 2.0, 1.0), (logits / 2).log_softmax(-1))


def test_top_p_samples_lie_in_the_nucleus_with_its_logprobs(tiny_model):
    worker = RolloutWorker("hf", str(tiny_model), "float32")  # its own: another test zeroes the shared one
    sampling = SamplingParams(8, temperature=1.0, top_p=0.3)
    samples = worker.generate(TASKS, 0, 4, sampling, seed=3)
    model = worker.engine.model
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion.token_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1]
        expected = processed_logprobs(logits, 1.0, 0.3)
        chosen = expected.gather(-1, torch.tensor(s.completion.token_ids)[:, None]).squeeze(1)
        assert torch.isfinite(chosen).all()  # never a token outside the nucleus
        torch.testing.assert_close(chosen, torch.tensor(s.completion.logprobs), atol=1e-4, rtol=0)


def test_the_output_layer_gets_a_contiguous_input_and_the_same_logits(tiny_model):
    """`contiguous_head_input` hands the output layer a contiguous copy of the kept positions
    (bf16 on CPU is slow on the strided slice) and changes no logit."""
    from trainer.engines.head import contiguous_head_input

    plain = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = contiguous_head_input(AutoModelForCausalLM.from_pretrained(tiny_model))
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, args, _out: seen.append(args[0].is_contiguous()))
    ids = torch.randint(0, plain.config.vocab_size, (3, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, logits_to_keep=5).logits,
                                   plain(input_ids=ids, logits_to_keep=5).logits, atol=0, rtol=0)
    assert seen == [True]
