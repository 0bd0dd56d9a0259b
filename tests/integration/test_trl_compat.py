"""The fixture rewards are real TRL reward functions: TRL's GRPOTrainer trains with them, and
Flywheel's loader hands back the very same function objects by import path."""

import pytest
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from rewards import load
from tests.fixtures import trl_rewards

pytestmark = pytest.mark.slow


def test_same_functions_run_in_trl_grpo_trainer_and_flywheel(tiny_model, tmp_path):
    rows = [{"prompt": "How many apples?", "answer": "12"}, {"prompt": "How many boxes?", "answer": "7"}] * 2
    config = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", save_strategy="no", max_steps=1,
                        per_device_train_batch_size=8, num_generations=4, max_completion_length=8,
                        logging_steps=1, disable_tqdm=True)
    funcs = [trl_rewards.digit_share, trl_rewards.answer_length]
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model), reward_funcs=funcs, args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=AutoTokenizer.from_pretrained(tiny_model))
    trainer.train()
    logged = trainer.state.log_history[0]
    assert "rewards/digit_share/mean" in logged and "rewards/answer_length/mean" in logged

    for fn in funcs:
        module = load(import_path=f"tests.fixtures.trl_rewards:{fn.__name__}")
        assert module.fn is fn and not module.is_async
