"""vLLM on GPUs (needs vLLM's GPU wheel, which the CPU install and CI do not have): the learner
broadcasts each step's weights over NCCL into the engines, and an engine sharing a GPU with a
learner rank sleeps between rollouts. In both, every step's rollout logprobs must track the
learner's at the weights that sampled them: stale weights in the engine (a transfer that did not
land, or an engine that woke with its old weights) would put the gap far above the bound."""

import pytest

from tests.conftest import job_payload
from trainer.loop import train
from trainer.spec import parse_spec

pytestmark = pytest.mark.gpu

STEPS = 4
GAP = 0.05  # mean |log p_rollout - log p_learner|; a stale engine at lr 3e-3 is off by far more


def run(model, tmp_path, name: str, workers: int, ranks: int, zero_stage: int, **vllm) -> list[dict]:
    pytest.importorskip("vllm")
    spec = parse_spec(job_payload(
        model, tmp_path, name=name,
        rollout={"engine": "vllm", "workers": workers, "prompts_per_step": 4, "max_new_tokens": 12,
                 "vllm": {"max_model_len": 512, **vllm}},
        learner={"ranks": ranks, "zero_stage": zero_stage, "lr": 3e-3, "micro_batch": 32 // ranks},
        schedule={"steps": STEPS, "checkpoint_interval": 0, "seed": 0},
    ))
    return train(spec, echo=lambda line: None).history


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_weights_reach_the_engines_over_nccl(vllm_tiny_model, tmp_path, ray_cluster, zero_stage):
    history = run(vllm_tiny_model, tmp_path, f"nccl{zero_stage}", workers=1, ranks=1, zero_stage=zero_stage,
                  weight_transfer="nccl", gpu_memory_utilization=0.3)
    assert len(history) == STEPS
    assert all(m["mismatch/logprob_diff_mean"] < GAP for m in history), history


def test_an_engine_sharing_the_learners_gpu_sleeps_and_wakes_with_new_weights(vllm_tiny_model, tmp_path,
                                                                               ray_cluster):
    history = run(vllm_tiny_model, tmp_path, "sleep", workers=1, ranks=1, zero_stage=2, sleep=True,
                  gpu_memory_utilization=0.3)
    assert all(m["mismatch/logprob_diff_mean"] < GAP for m in history), history
