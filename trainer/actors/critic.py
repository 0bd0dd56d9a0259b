"""PPO's critic: a value model on its own DeepSpeed ranks (a Ray actor per rank, its own
torch.distributed group), initialised from the base model with a fresh scalar head.

The value of completion token t is read at the position that predicts it (the state before the
token), the same positions the learner reads logprobs at, so values, logprobs and advantages
line up index for index.
"""

from __future__ import annotations

import torch

from trainer.affinity import pin_to_core
from trainer.algorithms.losses import aggregate
from trainer.algorithms.ppo import clipped_value_loss
from trainer.learner import LearnBatch, StepCounts, deepspeed_engine, free_port, init_distributed, pad_batch


class Critic:
    """Wrapped with `ray.remote` by the cluster. `address()` on rank 0 first, then `setup()` on all."""

    def __init__(self, rank: int, world_size: int, threads: int = 1, core: int | None = None):
        pin_to_core(core, threads)
        self.rank, self.world_size = rank, world_size

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master: tuple[str, int], model_path: str, dtype: str, learner, lr: float, value_clip: float,
              per_rank: int) -> None:
        from transformers import AutoModelForTokenClassification, AutoTokenizer

        init_distributed(master, self.rank, self.world_size)
        self.micro_batch, self.value_clip = learner.micro_batch, value_clip
        self.gas = per_rank // learner.micro_batch
        self.pad_id = AutoTokenizer.from_pretrained(model_path).pad_token_id
        torch.manual_seed(0)  # the same fresh value head on every rank
        model = AutoModelForTokenClassification.from_pretrained(model_path, num_labels=1, dtype=getattr(torch, dtype))
        self.engine = deepspeed_engine(model, learner, lr, self.gas, dtype)

    def _values(self, input_ids, attention, first: int) -> torch.Tensor:
        """Values at positions first … end-1 (each predicts the token after it)."""
        out = self.engine(input_ids=input_ids, attention_mask=attention)
        return out.logits[:, first:-1, 0].float()

    @torch.no_grad()
    def values(self, batch: LearnBatch) -> list[list[float]]:
        """The value before each completion token, per sample."""
        self.engine.eval()
        out = []
        for start in range(0, len(batch.prompt_ids), self.micro_batch):
            stop = min(start + self.micro_batch, len(batch.prompt_ids))
            input_ids, attention, _, _, _ = pad_batch(batch, start, stop, self.pad_id)
            first = min(len(p) for p in batch.prompt_ids[start:stop]) - 1
            values = self._values(input_ids.to(self.engine.device), attention.to(self.engine.device), first)
            for r, i in enumerate(range(start, stop)):
                n_p, n_c = len(batch.prompt_ids[i]), len(batch.completion_ids[i])
                out.append(values[r, n_p - 1 - first : n_p - 1 - first + n_c].tolist())
        return out

    def train_step(self, batch: LearnBatch, returns: list[list[float]], counts: StepCounts) -> dict[str, float]:
        """One optimizer step on the clipped value loss (token mean over the whole mini-batch).
        `batch.old_logprobs` carries the rollout-time values (the clip's anchor)."""
        self.engine.train()
        target = LearnBatch(batch.prompt_ids, batch.completion_ids, returns, batch.advantages, batch.mask)
        stats = {"value_loss": 0.0, "value_clipped": 0.0, "tokens": 0.0}
        for start in range(0, len(batch.prompt_ids), self.micro_batch):
            stop = start + self.micro_batch
            input_ids, attention, mask, old_values, _ = (t.to(self.engine.device)
                                                         for t in pad_batch(batch, start, stop, self.pad_id))
            returns_B_T = pad_batch(target, start, stop, self.pad_id)[3].to(self.engine.device)
            first = min(len(p) for p in batch.prompt_ids[start:stop]) - 1
            mask, old_values, returns_B_T = mask[:, first:], old_values[:, first:], returns_B_T[:, first:]
            values = self._values(input_ids, attention, first)
            per_token, clipped = clipped_value_loss(values, old_values, returns_B_T, self.value_clip)
            loss = aggregate(per_token, mask, "token_mean", counts.num_sequences, counts.num_tokens)
            self.engine.backward(loss * self.world_size * self.gas)
            self.engine.step()
            stats["value_loss"] += float(loss)
            stats["value_clipped"] += float((clipped & mask).sum())
            stats["tokens"] += float(mask.sum())
        return stats

    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
