"""The outcome model's DeepSpeed ranks: the base model with a fresh scalar head
(`AutoModelForSequenceClassification`, one label), trained with the logistic loss to predict a
trace's outcome from its conversation. Conversations are token ids laid out by
`rewards.outcome_model.conversation_ids` and scored by its `logits`, the same two functions the
`outcome_model` reward module reads new conversations with, so training and scoring agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rewards.outcome_model import META_FILE, logits
from trainer.actors.deepspeed_rank import DeepSpeedRank
from trainer.algorithms.classification import binary_loss


class OutcomeClassifier(DeepSpeedRank):
    """Wrapped with `ray.remote` by the cluster. `address()` on rank 0 first, then `setup()` on all."""

    def setup(self, master: tuple[str, int], model_path: str, dtype: str, learner, per_rank: int) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._join(master)
        self.zero_stage = learner.zero_stage
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        torch.manual_seed(0)  # the same fresh head on every rank
        model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=1, dtype=getattr(torch, dtype))
        model.config.pad_token_id = pad_id
        self._start_engine(model, learner, learner.lr, per_rank, dtype, pad_id)

    def train_step(self, ids_B: list[list[int]], labels_B: list[bool], num_sequences: int) -> dict[str, float]:
        """One optimizer step on this rank's share; the loss is summed over sequences and divided
        by the whole step's `num_sequences`, so any split gives the full-batch gradient."""
        self.engine.train()
        stats = {"loss": 0.0, "correct": 0.0, "sequences": 0.0}
        for start in range(0, len(ids_B), self.micro_batch):
            logits_B = logits(self.engine, ids_B[start:start + self.micro_batch], self.pad_id)
            labels = torch.tensor(labels_B[start:start + self.micro_batch], dtype=torch.float32, device=logits_B.device)
            loss = binary_loss(logits_B, labels).sum() / num_sequences
            self._backward(loss)
            stats["loss"] += float(loss)
            stats["correct"] += float(((logits_B > 0).float() == labels).sum())
            stats["sequences"] += len(labels)
        return stats

    @torch.no_grad()
    def predict(self, ids_B: list[list[int]]) -> list[float]:
        """P(good outcome) of each conversation."""
        self.engine.eval()
        return [p for start in range(0, len(ids_B), self.micro_batch)
                for p in torch.sigmoid(logits(self.engine, ids_B[start:start + self.micro_batch], self.pad_id)).tolist()]

    def export(self, directory: str, meta: dict) -> str | None:
        """Write the classifier in Hugging Face format with its `outcome_model.json` (rank 0); every
        rank must call it (ZeRO-3 gathers the parameters collectively)."""
        import deepspeed

        module = self.engine.module
        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        if self.rank != 0:
            return None
        out = Path(directory)
        module.save_pretrained(out, state_dict=state)
        self.tokenizer.save_pretrained(out)
        (out / META_FILE).write_text(json.dumps(meta, indent=2))
        return str(out)
