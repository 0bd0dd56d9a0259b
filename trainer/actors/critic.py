"""PPO's critic: a value model on its own DeepSpeed ranks (a Ray actor per rank, its own
torch.distributed group), initialised from the base model with a fresh scalar head.

The value of completion token t is read at the position that predicts it (the state before the
token), the same positions the learner reads logprobs at, so values, logprobs and advantages
line up index for index.
"""

from __future__ import annotations

import torch

from trainer.actors.deepspeed_rank import DeepSpeedRank, MicroBatch
from trainer.algorithms.losses import aggregate
from trainer.algorithms.ppo import clipped_value_loss
from trainer.types import StepCounts, TokenBatch, ValueBatch


class Critic(DeepSpeedRank):
    """Wrapped with `ray.remote` by the cluster. `address()` on rank 0 first, then `setup()` on all."""

    def setup(self, master: tuple[str, int], model_path: str, dtype: str, learner, lr: float, value_clip: float,
              per_rank: int) -> None:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        self._join(master)
        self.value_clip = value_clip
        pad_id = AutoTokenizer.from_pretrained(model_path).pad_token_id
        torch.manual_seed(0)  # the same fresh value head on every rank
        model = AutoModelForTokenClassification.from_pretrained(model_path, num_labels=1, dtype=getattr(torch, dtype))
        self._start_engine(model, learner, lr, per_rank, dtype, pad_id)

    def _values(self, mb: MicroBatch) -> torch.Tensor:
        """Values [B, T] at the kept positions (each predicts the token after it)."""
        out = self.engine(input_ids=mb.input_ids_B_S, attention_mask=mb.attention_B_S)
        return out.logits[:, mb.first:-1, 0].float()

    @torch.no_grad()
    def values(self, batch: TokenBatch) -> list[list[float]]:
        """The value before each completion token, per sample."""
        self.engine.eval()
        return [v for mb in self._micro_batches(batch) for v in mb.unalign(self._values(mb))]

    def train_step(self, batch: ValueBatch, counts: StepCounts) -> dict[str, float]:
        """One optimizer step on the clipped value loss (token mean over the whole mini-batch)."""
        self.engine.train()
        stats = {"value_loss": 0.0, "value_clipped": 0.0, "tokens": 0.0}
        for mb in self._micro_batches(batch):
            values_B_T = self._values(mb)
            per_token, clipped = clipped_value_loss(values_B_T, mb.align(batch.old_values_B_T),
                                                    mb.align(batch.returns_B_T), self.value_clip)
            loss = aggregate(per_token, mb.mask_B_T, "token_mean", counts.num_sequences, counts.num_tokens)
            self._backward(loss)
            stats["value_loss"] += float(loss)
            stats["value_clipped"] += float((clipped & mb.mask_B_T).sum())
            stats["tokens"] += float(mb.mask_B_T.sum())
        return stats
