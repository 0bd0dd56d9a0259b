"""A DeepSpeed learner rank: one Ray actor per data-parallel rank, together one torch.distributed
group (gloo on CPU, NCCL on GPU).

Each rank gets an equal share of the step's samples, runs them in micro-batches with DeepSpeed's
gradient accumulation, and all ranks take one optimizer step. The loss of every micro-batch is
normalised by the *whole step's* sequence and token counts, then multiplied back by
world_size × accumulation steps, because DeepSpeed divides by both (averaging gradients over
ranks, scaling the loss by 1/GAS); the summed gradient is then exactly that of the full-batch
loss, whichever split the batch had.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.affinity import pin_to_core
from trainer.algorithms import policy_loss_for
from trainer.algorithms.losses import aggregate, k3_kl, token_logprobs_and_entropy


@dataclass
class LearnBatch:
    """One rank's share of a step: token ids, old logprobs and advantages per sample."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    old_logprobs: list[list[float]]
    advantages: list[float] | list[list[float]]
    """One per sample, or one per completion token (PPO's GAE)."""
    mask: list[list[bool]]
    """Which completion tokens count in the loss (False for environment-written or failed samples)."""


@dataclass(frozen=True)
class StepCounts:
    """Batch-wide counts every rank normalises by."""

    num_sequences: int
    num_tokens: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def pad_batch(batch: LearnBatch, start: int, stop: int, pad_id: int):
    """Right-padded input ids, completion-token mask, old logprobs and advantages for rows [start, stop)."""
    rows = range(start, stop)
    seqs = [batch.prompt_ids[i] + batch.completion_ids[i] for i in rows]
    width = max(map(len, seqs))
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    # Targets are shifted by one: position p predicts token p + 1.
    loss_mask = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
    old = torch.zeros((len(seqs), width - 1))
    for r, i in enumerate(rows):
        n_p, n_c = len(batch.prompt_ids[i]), len(batch.completion_ids[i])
        input_ids[r, : n_p + n_c] = torch.tensor(seqs[r])
        attention[r, : n_p + n_c] = 1
        loss_mask[r, n_p - 1 : n_p - 1 + n_c] = torch.tensor(batch.mask[i], dtype=torch.bool)
        old[r, n_p - 1 : n_p - 1 + n_c] = torch.tensor(batch.old_logprobs[i])
    if rows and isinstance(batch.advantages[start], list):  # per-token advantages (PPO)
        advantages = torch.zeros((len(seqs), width - 1))
        for r, i in enumerate(rows):
            n_p = len(batch.prompt_ids[i])
            advantages[r, n_p - 1 : n_p - 1 + len(batch.advantages[i])] = torch.tensor(batch.advantages[i])
    else:
        advantages = torch.tensor(batch.advantages[start:stop])
    return input_ids, attention, loss_mask, old, advantages


STALE_BUILD_LOCK_S = 300


def clear_stale_build_locks() -> None:
    """Remove torch-extension build locks older than STALE_BUILD_LOCK_S. DeepSpeed JIT-builds its
    CPU shared-memory op (about 40 s) under a lock file; a process killed mid-build leaves the file
    behind and every later build waits on it forever."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    for lock in root.glob("*/*/lock") if root.exists() else []:
        if time.time() - lock.stat().st_mtime > STALE_BUILD_LOCK_S:
            print(f"removing a stale build lock left by a killed process: {lock}", file=sys.stderr)
            lock.unlink(missing_ok=True)


def init_distributed(master: tuple[str, int], rank: int, world_size: int) -> None:
    """Join this actor's torch.distributed group (NCCL on GPUs, gloo on CPU) via DeepSpeed."""
    import deepspeed

    clear_stale_build_locks()
    os.environ.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


def deepspeed_engine(model, learner, lr: float, gas: int, dtype: str):
    """A DeepSpeed engine with AdamW and the learner spec's ZeRO stage, micro-batch and clipping."""
    import deepspeed

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=learner.weight_decay)
    config = {
        "train_micro_batch_size_per_gpu": learner.micro_batch,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": learner.grad_clip,
        "zero_optimization": {"stage": learner.zero_stage},
        "bf16": {"enabled": dtype == "bfloat16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


class Learner:
    """Wrapped with `ray.remote` by the loop. Call `address()` on rank 0 first, then `setup()` on all."""

    def __init__(self, rank: int, world_size: int, threads: int = 1, core: int | None = None):
        pin_to_core(core, threads)
        self.rank, self.world_size = rank, world_size

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def setup(self, master: tuple[str, int], model_path: str, dtype: str, learner, algorithm,
              temperature: float, max_new_tokens: int, per_rank: int) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        init_distributed(master, self.rank, self.world_size)
        self.algorithm, self.temperature = algorithm, temperature
        self.constant = algorithm.loss_constant or max_new_tokens
        self.zero_stage = learner.zero_stage
        self.micro_batch = learner.micro_batch
        self.gas = per_rank // learner.micro_batch
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        torch_dtype = getattr(torch, dtype)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
        self.reference = None
        if algorithm.kl_beta > 0:
            self.reference = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype).eval()
            self.reference.requires_grad_(False)
        self.engine = deepspeed_engine(model, learner, learner.lr, self.gas, dtype)
        self.rl_lr = learner.lr
        if self.reference is not None:
            self.reference.to(self.engine.device)

    def _logprobs(self, model, input_ids, attention, first: int, temperature: float | None = None):
        """Logprobs and entropies of tokens first+1 … end. Positions before `first` (the shortest
        prompt's last token) predict only prompt tokens, so the LM head and softmax skip them."""
        keep = input_ids.shape[1] - first
        out = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=keep)
        logits = out.logits[:, :-1].float() / (temperature or self.temperature)
        return token_logprobs_and_entropy(logits, input_ids[:, first + 1 :])

    def train_step(self, batch: LearnBatch, counts: StepCounts) -> dict[str, float]:
        """Forward/backward every micro-batch, then one optimizer step. Returns summed statistics."""
        algo, device = self.algorithm, self.engine.device
        stats = {"loss": 0.0, "clipped_tokens": 0.0, "kl_sum": 0.0, "entropy_sum": 0.0, "tokens": 0.0}
        self._set_lr(self.rl_lr)
        self.engine.train()
        for start in range(0, len(batch.advantages), self.micro_batch):
            stop = start + self.micro_batch
            input_ids, attention, mask, old, adv = (t.to(device) for t in
                                                    pad_batch(batch, start, stop, self.tokenizer.pad_token_id))
            first = min(len(p) for p in batch.prompt_ids[start:stop]) - 1
            mask, old = mask[:, first:], old[:, first:]
            adv = adv[:, first:] if adv.dim() == 2 else adv
            logprobs, entropy = self._logprobs(self.engine, input_ids, attention, first)
            per_token, clipped = policy_loss_for(algo, logprobs, old, adv, mask)
            if self.reference is not None and getattr(algo, "kl_mode", "loss") == "loss":
                with torch.no_grad():
                    ref_logprobs, _ = self._logprobs(self.reference, input_ids, attention, first)
                kl = k3_kl(logprobs, ref_logprobs)
                per_token = per_token + algo.kl_beta * kl
                stats["kl_sum"] += float((kl.detach() * mask).sum())
            loss = aggregate(per_token, mask, algo.loss_agg, counts.num_sequences, counts.num_tokens, self.constant)
            self.engine.backward(loss * self.world_size * self.gas)
            self.engine.step()
            with torch.no_grad():
                stats["loss"] += float(loss)
                stats["clipped_tokens"] += float((clipped & mask).sum())
                stats["entropy_sum"] += float((entropy * mask).sum())
                stats["tokens"] += float(mask.sum())
        grad_norm = self.engine.get_global_grad_norm()
        stats["grad_norm"] = float(grad_norm) if grad_norm is not None else 0.0
        return stats

    @torch.no_grad()
    def reference_logprobs(self, batch: LearnBatch) -> list[list[float]]:
        """The frozen reference's logprob of every completion token (PPO's KL-in-reward)."""
        out = []
        for start in range(0, len(batch.prompt_ids), self.micro_batch):
            stop = min(start + self.micro_batch, len(batch.prompt_ids))
            input_ids, attention, _, _, _ = pad_batch(batch, start, stop, self.tokenizer.pad_token_id)
            first = min(len(p) for p in batch.prompt_ids[start:stop]) - 1
            logprobs, _ = self._logprobs(self.reference, input_ids.to(self.engine.device),
                                         attention.to(self.engine.device), first)
            for r, i in enumerate(range(start, stop)):
                n_p, n_c = len(batch.prompt_ids[i]), len(batch.completion_ids[i])
                out.append(logprobs[r, n_p - 1 - first : n_p - 1 - first + n_c].tolist())
        return out

    def sft_step(self, batch: LearnBatch, counts: StepCounts, lr: float) -> dict[str, float]:
        """One supervised step (the warm start): the mean negative log-likelihood of the masked
        tokens over the whole batch, at temperature 1. Returns summed loss and token count."""
        self._set_lr(lr)
        self.engine.train()
        stats = {"loss": 0.0, "tokens": 0.0}
        for start in range(0, len(batch.prompt_ids), self.micro_batch):
            input_ids, attention, mask, _, _ = (t.to(self.engine.device) for t in pad_batch(
                batch, start, start + self.micro_batch, self.tokenizer.pad_token_id))
            first = min(len(p) for p in batch.prompt_ids[start:start + self.micro_batch]) - 1
            mask = mask[:, first:]
            logprobs, _ = self._logprobs(self.engine, input_ids, attention, first, temperature=1.0)
            loss = aggregate(-logprobs, mask, "token_mean", counts.num_sequences, counts.num_tokens, self.constant)
            self.engine.backward(loss * self.world_size * self.gas)
            self.engine.step()
            stats["loss"] += float(loss)
            stats["tokens"] += float(mask.sum())
        return stats

    def _set_lr(self, lr: float) -> None:
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on rank 0 (None elsewhere). Every rank must call it: under
        ZeRO-3 the parameters are gathered collectively."""
        import deepspeed

        module = self.engine.module
        # The copies matter: gathered ZeRO-3 tensors are freed on leaving the context, and a ZeRO-1/2
        # parameter is a view into one flat buffer, which pickling would send whole for every tensor.
        if self.zero_stage == 3:
            with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
                state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
            return state if self.rank == 0 else None
        if self.rank != 0:
            return None
        return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")

    def export(self, directory: str) -> str | None:
        """Write the policy in Hugging Face format (rank 0); every rank must call it."""
        state = self.full_state_dict()
        if self.rank != 0:
            return None
        out = Path(directory)
        self.engine.module.save_pretrained(out, state_dict=state)
        self.tokenizer.save_pretrained(out)
        return str(out)
