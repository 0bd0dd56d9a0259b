"""The real open-weights model (`make real-model`: SmolLM2-135M-Instruct from its GGUF release)
loads in both rollout engines and answers a support question in English."""

import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from trainer.engines.hf import HFEngine
from trainer.types import SamplingParams

pytestmark = pytest.mark.slow

QUESTION = "My order arrived damaged. What should I do?"
TOPIC = re.compile(r"\b(damage[sd]?|order|refund|replace(ment)?|return|contact|seller|customer)\b", re.I)


@pytest.fixture(scope="module")
def chat_prompt(real_model) -> list[int]:
    engine = HFEngine(str(real_model))
    return engine.tokenizer().apply_chat_template([{"role": "user", "content": QUESTION}],
                                                  add_generation_prompt=True, tokenize=True, return_dict=False)


def assert_coherent(text: str, token_ids: list[int], model) -> None:
    words = text.split()
    assert len(words) >= 12, text
    assert sum(w.strip(".,:;!?*()'\"").isalpha() for w in words) / len(words) > 0.7, text
    assert TOPIC.search(text), f"the reply is not about the question: {text!r}"
    # The model prefers its own reply, by a wide margin, to the same tokens in random order.
    shuffled = [token_ids[i] for i in torch.randperm(len(token_ids), generator=torch.Generator().manual_seed(0))]
    assert mean_logprob(model, token_ids) > mean_logprob(model, shuffled) + 2.0


@torch.no_grad()
def mean_logprob(model, token_ids: list[int]) -> float:
    ids = torch.tensor([token_ids])
    logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], dim=-1)
    return float(logp.gather(-1, ids[0, 1:, None]).mean())


@pytest.mark.parametrize("engine_name", ["hf", "vllm"])
def test_the_real_model_answers_coherently_in_both_engines(real_model, chat_prompt, engine_name):
    if engine_name == "hf":
        engine = HFEngine(str(real_model))
    else:
        from trainer.engines.vllm_engine import VLLMEngine

        engine = VLLMEngine(str(real_model), "float32", kv_cache_gb=1, max_model_len=1024)
    [[reply]] = engine.generate([chat_prompt], 1, SamplingParams(48, temperature=0.2), seed=0)
    assert len(reply.token_ids) == len(reply.logprobs) > 0
    model = AutoModelForCausalLM.from_pretrained(real_model)
    assert_coherent(reply.text, reply.token_ids, model)
