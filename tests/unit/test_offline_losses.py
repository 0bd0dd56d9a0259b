"""The losses that learn from logged outcomes (trainer/algorithms/offline.py), with exact numbers."""

import math

import pytest
import torch

from trainer.algorithms import build_algorithm
from trainer.algorithms.offline import kto_losses, offline_advantages, truncated_is_pg_loss
from trainer.spec.algorithms import FilteredSFTSpec, KTOSpec, OfflinePGSpec


def test_offline_advantages_subtract_the_batch_or_the_group_mean_of_the_valid_traces():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.5])
    # the invalid third trace is left out of the mean (1 + 0 + 0.5) / 3 = 0.5 and gets 0
    assert offline_advantages(rewards, torch.tensor([True, True, False, True])).tolist() == [0.5, -0.5, 0.0, 0.0]
    # per group: a's mean is 0.5, b's 0.75
    by_group = offline_advantages(rewards, torch.ones(4, dtype=torch.bool), ["a", "a", "b", "b"])
    assert by_group.tolist() == [0.5, -0.5, 0.25, -0.25]


def test_truncated_is_loss_weighs_each_token_by_the_capped_ratio_to_the_behaviour_policy():
    logprobs = torch.tensor([[math.log(0.5), math.log(0.2)]], requires_grad=True)
    behaviour = torch.tensor([[math.log(0.25), math.log(0.4)]])
    loss, capped, weight = truncated_is_pg_loss(logprobs, behaviour, torch.tensor([2.0]), cap=1.5)
    # ratios 2 and 0.5; the first is capped at 1.5. l = -w * A * log pi
    assert weight[0].tolist() == pytest.approx([1.5, 0.5])
    assert capped.tolist() == [[True, False]]
    assert loss[0].tolist() == pytest.approx([-1.5 * 2 * math.log(0.5), -0.5 * 2 * math.log(0.2)])
    loss.sum().backward()
    # the gradient on log pi is -w * A: a capped token still learns, at most C times on-policy
    assert logprobs.grad[0].tolist() == pytest.approx([-3.0, -1.0])


def test_kto_losses_are_trls_formula():
    policy, reference = torch.tensor([-3.0, -5.0]), torch.tensor([-4.0, -4.0])  # rho = +1, -1
    losses = kto_losses(policy, reference, torch.tensor([True, False]), 0.5, beta=0.1, desirable_weight=1.0,
                        undesirable_weight=2.0)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert losses.tolist() == pytest.approx([1 - sigmoid(0.1 * (1 - 0.5)), 2 * (1 - sigmoid(0.1 * (0.5 + 1)))])
    # a negative KL estimate is clamped to 0, as TRL clamps it
    clamped = kto_losses(policy, reference, torch.tensor([True, False]), -1.0, 0.1, 1.0, 2.0)
    assert clamped.tolist() == pytest.approx([1 - sigmoid(0.1), 2 * (1 - sigmoid(0.1))])


def test_kto_per_token_loss_reduces_to_the_mean_over_sequences_with_kto_gradient():
    """Each token carries its sequence's loss; `sequence_mean` makes that the batch mean, and every
    token of a sequence gets d l_i / d rho_i / N."""
    kto = build_algorithm(KTOSpec(beta=0.5), max_new_tokens=8)
    logprobs = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    reference = torch.tensor([[-1.5, -2.0, 0.0], [-0.5, -1.0, -0.5]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = kto.trace_advantages(torch.tensor([1.0, 0.0]), torch.tensor([True, True]), None)
    assert advantages.tolist() == [1.0, -1.0]
    per_token, _, _ = kto.corrected_loss(logprobs, logprobs.detach(), torch.zeros(2, 3), advantages, mask,
                                         reference, 0.1)
    loss = kto.reduce(per_token, mask, num_sequences=2, num_tokens=5)
    expected = kto_losses(torch.tensor([-3.0, -1.5]), torch.tensor([-3.5, -2.0]), torch.tensor([True, False]),
                          0.1, 0.5, 1.0, 1.0)
    assert float(loss) == pytest.approx(float(expected.mean()))
    loss.backward()
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    d_desirable = -0.5 * s(0.5 * 0.4) * (1 - s(0.5 * 0.4)) / 2    # rho 0.5, z 0.1
    d_undesirable = 0.5 * s(0.5 * -0.4) * (1 - s(0.5 * -0.4)) / 2  # rho 0.5: z - rho = -0.4
    assert logprobs.grad.flatten().tolist() == pytest.approx([d_desirable, d_desirable, 0.0] + [d_undesirable] * 3)


def test_filtered_sft_learns_only_from_traces_that_reach_the_threshold():
    sft = build_algorithm(FilteredSFTSpec(min_reward=0.5), max_new_tokens=8)
    assert sft.keeps(torch.tensor([1.0, 0.5, 0.0])).tolist() == [True, True, False]
    logprobs = torch.tensor([[-1.0, -3.0]])
    per_token, _, _ = sft.corrected_loss(logprobs, logprobs, torch.zeros(1, 2), torch.tensor([1.0]),
                                         torch.tensor([[True, True]]))
    assert float(sft.reduce(per_token, torch.tensor([[True, True]]), 1, 2)) == pytest.approx(2.0)  # mean NLL


def test_offline_pg_group_baseline_needs_its_column():
    with pytest.raises(ValueError, match="group_column"):
        OfflinePGSpec(baseline="group")
    assert OfflinePGSpec(baseline="group", group_column="intent").group_size == 1


def test_kto_agrees_with_trls_kto_trainer(tiny_model, tmp_path):
    """TRL's `KTOTrainer._compute_loss` on one of its own batches (a policy nudged off the frozen
    reference, desirable and undesirable completions, TRL's mismatched pairs for the KL), against
    `kto_losses` on the same batch's sequence logprobs and reference point."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    policy, reference = (AutoModelForCausalLM.from_pretrained(tiny_model).eval() for _ in range(2))
    rows = [{"prompt": [{"role": "user", "content": f"How many orders {i}?"}],
             "completion": [{"role": "assistant", "content": ["261", "tickets", "779 steps", "orders"][i % 4]}],
             "label": i % 3 != 0} for i in range(8)]
    args = KTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, beta=0.3, desirable_weight=1.0,
                     undesirable_weight=1.5, report_to=[], use_cpu=True, max_length=64, disable_tqdm=True)
    trainer = KTOTrainer(model=policy, ref_model=reference, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))

    def sequence_logprobs(model, ids, attention, completion):
        logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
        token_B_T = torch.log_softmax(logits, -1).gather(2, ids[:, 1:, None]).squeeze(2)
        return (token_B_T * completion[:, 1:]).sum(1)

    pairs = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    mismatched = (batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    # One supervised step on the completions moves the policy off the reference (z > 0).
    (-sequence_logprobs(policy, *pairs).mean()).backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.05 * p.grad
    policy.zero_grad()
    theirs = trainer._compute_loss(policy, batch, False)
    sequence_logprobs = torch.no_grad()(sequence_logprobs)
    z = float((sequence_logprobs(policy, *mismatched) - sequence_logprobs(reference, *mismatched)).mean())
    ours = kto_losses(sequence_logprobs(policy, *pairs), sequence_logprobs(reference, *pairs),
                      batch["label"].bool(), z, beta=0.3, desirable_weight=1.0, undesirable_weight=1.5).mean()
    assert z > 0  # the nudged policy has moved: the reference point is not the clamp's 0
    torch.testing.assert_close(ours, theirs.detach(), atol=1e-5, rtol=1e-5)
