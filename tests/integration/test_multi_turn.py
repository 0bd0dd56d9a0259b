"""Multi-turn rollouts on the support desk: the environment's tokens never enter the loss."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from demos.legacy_agent import Mistakes, write_demonstrations
from environments import build
from trainer.actors.deepspeed_rank import micro_batch
from trainer.actors.rollout_worker import RolloutWorker
from trainer.algorithms.losses import aggregate, clipped_policy_loss, token_logprobs
from trainer.driver.demonstrations import read_demonstrations
from trainer.driver.warm_start import encode
from trainer.tiny import build_tiny_model, corpus_lines
from trainer.types import PolicyBatch, SamplingParams

ENV = {"train_size": 16, "eval_size": 4, "max_turns": 3, "system_prompt": False}


@pytest.fixture(scope="module")
def desk(tmp_path_factory):
    root = tmp_path_factory.mktemp("desk")
    write_demonstrations(root / "demos.jsonl", 200, Mistakes(), system_prompt=False)
    # Two heads of 32: vLLM's CPU attention needs a head size of at least 32.
    model = build_tiny_model(root / "model", corpus_lines(root / "demos.jsonl"), vocab_size=400, heads=2)
    return root, model


@pytest.fixture(scope="module", params=["hf", "vllm"])
def episodes(desk, request):
    """The same episodes' layout, whichever engine samples the assistant turns."""
    _, model = desk
    worker = RolloutWorker(request.param, str(model), "float32", environment=("support_desk", ENV),
                           vllm={"kv_cache_gb": 1})
    tasks = list(build("support_desk", ENV).tasks("train"))[:3]
    return worker, worker.generate(tasks, 0, 2, SamplingParams(12), seed=0)


def test_episode_tokens_split_into_sampled_and_environment_written(episodes):
    worker, samples = episodes
    tok = worker.engine.tokenizer()
    assert len(samples) == 6 and all(s.outcome["outcome"] in ("resolved", "escalated", "violation") for s in samples)
    multi = [s for s in samples if len(s.messages) > 1]
    assert multi, "a random policy never finishes in one turn here: the turn budget is 3"
    for s in samples:
        c = s.completion
        mask = c.loss_mask()
        assert len(mask) == len(c.token_ids) == len(c.logprobs)
        sampled = [t for t, m in zip(c.token_ids, mask, strict=True) if m]
        written = [t for t, m in zip(c.token_ids, mask, strict=True) if not m]
        assistant = [m["content"] for m in s.messages if m["role"] == "assistant"]
        replies = [m["content"] for m in s.messages if m["role"] != "assistant"]
        # What the mask keeps is exactly what the policy sampled; the rest holds every reply.
        assert tok.decode(sampled, skip_special_tokens=True) == "".join(assistant)
        text = tok.decode(written)
        assert all(r in text for r in replies)
        assert "<|im_start|>assistant" in text if replies else not written
        assert all(lp == 0.0 for lp, m in zip(c.logprobs, mask, strict=True) if not m)
        assert s.outcome["turns"] == len(assistant)


def test_environment_tokens_get_no_gradient(episodes, desk):
    _, samples = episodes
    _, model_dir = desk
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    batch = PolicyBatch([s.prompt_ids for s in samples], [s.completion.token_ids for s in samples],
                        [s.completion.loss_mask() for s in samples],
                        rollout_logprobs_B_T=[s.completion.logprobs for s in samples], advantages_B=[1.0, -1.0] * 3)
    mb = micro_batch(batch, range(len(samples)), 0)
    mask = mb.mask_B_T
    assert int(mask.sum()) == sum(sum(s.completion.loss_mask()) for s in samples)
    logits = model(input_ids=mb.input_ids_B_S, attention_mask=mb.attention_B_S).logits[:, mb.first:-1]
    logits.retain_grad()
    logprobs = token_logprobs(logits, mb.input_ids_B_S[:, mb.first + 1:])
    per_token, _ = clipped_policy_loss(logprobs, mb.align(batch.rollout_logprobs_B_T), mb.select(batch.advantages_B),
                                       0.2, 0.28)
    aggregate(per_token, mask, "token_mean").backward()
    grad_per_position = logits.grad.abs().sum(-1)
    env_positions = torch.zeros_like(mask)
    for r, s in enumerate(samples):
        start = len(s.prompt_ids) - 1 - mb.first
        for k, m in enumerate(s.completion.loss_mask()):
            env_positions[r, start + k] = not m
    assert env_positions.any()
    assert grad_per_position[env_positions].abs().max() == 0  # environment-written: no gradient at all
    assert (grad_per_position[mask] > 0).float().mean() > 0.9  # sampled tokens carry the gradient


def test_demonstrations_lay_out_like_rollouts(desk):
    root, model = desk
    worker = RolloutWorker("hf", str(model), "float32")
    tok = worker.engine.tokenizer()
    chat = read_demonstrations(root / "demos.jsonl")[0]
    enc = encode(tok, chat)
    assistant = [m["content"] for m in chat if m["role"] == "assistant"]
    sampled = [t for t, m in zip(enc.token_ids, enc.mask, strict=True) if m]
    assert tok.decode(sampled) == "".join(a + tok.eos_token for a in assistant)
    # The whole sequence is the chat template's own rendering of the conversation, up to the
    # last EOS (where a rollout stops too).
    rendered = tok.apply_chat_template(chat, tokenize=False)
    assert tok.decode(enc.prompt_ids + enc.token_ids) == rendered[:rendered.rindex(tok.eos_token) + len(tok.eos_token)]


@pytest.mark.slow
def test_warm_start_then_grpo_on_the_desk_through_the_real_stack(desk, tmp_path, ray_cluster):
    """Ray, DeepSpeed and the loop end to end on multi-turn episodes: the warm start lowers the
    demonstrations' loss, and the before/after evaluations carry the desk's outcome metrics."""
    from trainer.loop import train
    from trainer.spec import parse_spec

    root, model = desk
    spec = parse_spec({
        "name": "desk", "output_dir": str(tmp_path), "model": {"path": str(model)},
        "environment": {"name": "support_desk", "config": {**ENV, "eval_size": 6}},
        "rewards": [{"name": "resolution", "config": {"per_turn_cost": 0.01}}],
        "warm_start": {"data": str(root / "demos.jsonl"), "epochs": 2, "lr": 3e-3},
        "algorithm": {"group_size": 4}, "rollout": {"prompts_per_step": 4, "max_new_tokens": 12},
        "learner": {"ranks": 2, "micro_batch": 8, "lr": 1e-4},
        "schedule": {"steps": 2, "checkpoint_interval": 0}, "logging": {"wandb_mode": "offline"},
    })
    lines = []
    result = train(spec, echo=lines.append)
    warm = [float(line.rsplit("loss ", 1)[1]) for line in lines if line.startswith("warm start ")]
    assert len(warm) >= 2 and warm[-1] < warm[0] / 2, warm  # 25 supervised steps: the loss falls
    assert set(result.evaluations) == {"before", "after"}
    for metrics in result.evaluations.values():
        rates = [metrics[f"eval/{o}_rate"] for o in ("resolved", "escalated", "violation")]
        assert sum(rates) == pytest.approx(1.0)
        assert metrics["eval/turns_mean"] >= 1 and metrics["eval/tokens_per_episode"] > 0
        assert metrics["eval/latency_s_per_episode"] > 0
    assert len(result.history) == 2 and "reward/resolution" in result.history[-1]
    assert (result.export_dir / "config.json").exists()
