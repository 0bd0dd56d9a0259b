"""A job stopped after step k and restarted continues at k + 1 with the same optimizer state and
data position: its checkpoints and final weights equal those of a run that never stopped.

Runs with ZeRO-3 and a KL penalty, so parameter gathering and the reference model are exercised;
and with LoRA (`learner.lora`), where the checkpoint must carry the adapters and their optimizer
state, the workers must sample from exactly the merged weights, the KL reference is the base with
the adapters off, and the export is a plain model with the adapters beside it; and with
asynchronous rollout (`rollout.max_staleness = 1`), where the batch in flight at the checkpoint
must be saved with it. (That LoRA learns is shown in test_grpo_learning.py.)"""

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import job_payload
from trainer.loop import train
from trainer.spec import parse_spec

pytestmark = pytest.mark.slow


LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"]}


def spec_for(tiny_model, out_dir, lora=None, max_staleness=0):
    return parse_spec(job_payload(
        tiny_model, out_dir, name="resume",
        algorithm={"type": "grpo", "group_size": 4, "kl_beta": 0.05},
        rollout={"workers": 2, "prompts_per_step": 4, "max_new_tokens": 12, "max_staleness": max_staleness},
        learner={"ranks": 2, "zero_stage": 3, "lr": 3e-3, "micro_batch": 4, "lora": lora},
        schedule={"steps": 4, "checkpoint_interval": 2, "seed": 7},
    ))


def optimizer_state(ckpt_step_dir):
    """Every tensor of every rank's saved optimizer state, flattened in a fixed order."""
    tensors = []
    for path in sorted(ckpt_step_dir.glob("*optim_states.pt")):
        state = torch.load(path, map_location="cpu", weights_only=False)["optimizer_state_dict"]

        def walk(node):
            if isinstance(node, torch.Tensor):
                tensors.append(node.float().flatten())
            elif isinstance(node, dict):
                for key in sorted(node, key=str):
                    walk(node[key])
            elif isinstance(node, list | tuple):
                for item in node:
                    walk(item)

        walk(state)
    return torch.cat(tensors)


# Full weights are resumed in the asynchronous case (with its batch in flight besides), so a
# third, synchronous full-weight run would add nothing but time.
@pytest.mark.parametrize(("lora", "max_staleness"), [(LORA, 0), (None, 1)], ids=["lora", "async"])
def test_stop_and_resume_matches_an_uninterrupted_run(tiny_model, tmp_path, ray_cluster, lora, max_staleness):
    straight = train(spec_for(tiny_model, tmp_path / "straight", lora, max_staleness), echo=lambda _: None)

    resumed_spec = spec_for(tiny_model, tmp_path / "stopped", lora, max_staleness)
    first = train(resumed_spec, stop_after=2, echo=lambda _: None)
    assert first.steps_done == 2 and first.export_dir is None
    lines = []
    second = train(resumed_spec, echo=lines.append)
    assert lines[0].startswith("resumed from") and lines[0].endswith("at step 3")
    assert lines[1].startswith("step 3/4") and [m for m in second.history].__len__() == 2

    ckpt_a, ckpt_b = straight.checkpoint_dir, second.checkpoint_dir
    # Asynchronous: step 3's batch was in flight at the step-2 checkpoint, saved with it and
    # trained on after the restart (sampled with the weights of step 1, one version old).
    assert (ckpt_b / "step_2" / "in_flight.pkl").exists() == bool(max_staleness)
    assert [h["reward/mean"] for h in second.history] == [h["reward/mean"] for h in straight.history[2:]]
    if max_staleness:
        assert second.history[0]["async/staleness_max"] == 1
    for step in (2, 4):
        state_a = json.loads((ckpt_a / f"step_{step}" / "loop_state.json").read_text())
        state_b = json.loads((ckpt_b / f"step_{step}" / "loop_state.json").read_text())
        assert state_a == state_b  # same step, data epoch and cursor, seed
        torch.testing.assert_close(optimizer_state(ckpt_b / f"step_{step}"),
                                   optimizer_state(ckpt_a / f"step_{step}"), rtol=0, atol=1e-6)

    weights_a = load_file(straight.export_dir / "model.safetensors")
    weights_b = load_file(second.export_dir / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        torch.testing.assert_close(weights_b[key], weights_a[key], rtol=0, atol=1e-6)
    # A plain model, under LoRA too: the base's weights, no adapter or peft names.
    assert base.keys() <= weights_a.keys() and not any(".lora_" in k or ".base_layer." in k for k in weights_a)
    changed = {k for k in base if not torch.equal(weights_a[k], base[k])}
    assert changed  # it did train
    if lora:
        # Only the adapted layers moved; the adapters themselves are saved beside the merged model.
        assert all(k.endswith(tuple(f"{m}.weight" for m in LORA["target_modules"])) for k in changed), changed
        assert (straight.export_dir / "adapter" / "adapter_config.json").exists()
        # The workers sample from exactly the merged weights: their logprobs are the learner's own.
        assert max(h["mismatch/logprob_diff_max"] for h in straight.history) < 1e-4
        # The adapters start at zero, so the policy starts as the reference (the base, adapters off).
        assert straight.history[0]["kl"] < 1e-6 < straight.history[-1]["kl"]
