"""What the policy's and the critic's DeepSpeed ranks share: joining the torch.distributed group,
the engine, checkpoints, and the layout of a micro-batch as tensors (written once, used by the
policy, reference and value passes alike).

Token layout: a row is its prompt then its completion, right-padded. Position p predicts token
p + 1, so completion token k of a row whose prompt has n_p tokens is predicted at position
n_p - 1 + k. Positions before `first` (the shortest prompt's last token) predict only prompt
tokens, so the model's head and softmax skip them: per-token tensors are [B, T] with
T = S - 1 - first, and row r's completion starts at column n_p(r) - 1 - first.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from trainer.actors.affinity import pin_to_core
from trainer.types import TokenBatch

log = logging.getLogger("flywheel.learner")


@dataclass
class MicroBatch:
    """Rows of a batch as tensors, cut to the positions that predict completion tokens."""

    rows: range
    input_ids_B_S: torch.Tensor
    attention_B_S: torch.Tensor
    first: int
    """The first position whose output is kept (the shortest prompt's last token)."""
    mask_B_T: torch.Tensor
    starts: list[int]
    """Column of each row's first completion token in the [B, T] tensors."""
    lengths: list[int]
    """Completion tokens per row."""

    def align(self, per_row_T: list[list[float]]) -> torch.Tensor:
        """A per-token field of the whole batch (indexed by its row numbers) as [B, T]; 0 where
        a row has no completion token."""
        out = torch.zeros(self.mask_B_T.shape, device=self.mask_B_T.device)
        for r, i in enumerate(self.rows):
            out[r, self.starts[r]:self.starts[r] + len(per_row_T[i])] = torch.tensor(per_row_T[i])
        return out

    def select(self, per_row: list[float]) -> torch.Tensor:
        """A per-row field of the whole batch as [B]."""
        return torch.tensor([per_row[i] for i in self.rows], device=self.mask_B_T.device)

    def unalign(self, values_B_T: torch.Tensor) -> list[list[float]]:
        """Each row's completion tokens out of a [B, T] tensor."""
        return [values_B_T[r, s:s + n].tolist() for r, (s, n) in enumerate(zip(self.starts, self.lengths, strict=True))]


def micro_batch(batch: TokenBatch, rows: range, pad_id: int, device="cpu") -> MicroBatch:
    """Rows `rows` of `batch`, right-padded with `pad_id`."""
    prompts = [batch.prompt_ids_B[i] for i in rows]
    seqs = [p + batch.completion_ids_B_T[i] for p, i in zip(prompts, rows, strict=True)]
    width, first = max(map(len, seqs)), min(map(len, prompts)) - 1
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width - 1 - first), dtype=torch.bool)
    starts = [len(p) - 1 - first for p in prompts]
    lengths = [len(batch.completion_ids_B_T[i]) for i in rows]
    for r, i in enumerate(rows):
        input_ids[r, :len(seqs[r])] = torch.tensor(seqs[r])
        attention[r, :len(seqs[r])] = 1
        mask[r, starts[r]:starts[r] + lengths[r]] = torch.tensor(batch.mask_B_T[i], dtype=torch.bool)
    return MicroBatch(rows, input_ids.to(device), attention.to(device), first, mask.to(device), starts, lengths)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


STALE_BUILD_LOCK_S = 300


def clear_stale_build_locks() -> None:
    """Remove torch-extension build locks older than STALE_BUILD_LOCK_S. DeepSpeed JIT-builds its
    CPU shared-memory op (about 40 s) under a lock file; a process killed mid-build leaves the file
    behind and every later build waits on it forever."""
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    for lock in root.glob("*/*/lock") if root.exists() else []:
        if time.time() - lock.stat().st_mtime > STALE_BUILD_LOCK_S:
            log.warning("removing a stale build lock left by a killed process: %s", lock)
            lock.unlink(missing_ok=True)


def build_cpu_ops() -> None:
    """JIT-build DeepSpeed's CPU shared-memory op now, once, in one process (`make install` does):
    otherwise the first ranks of the first job build it, each waiting on the other's lock."""
    from deepspeed.accelerator import get_accelerator

    get_accelerator().create_op_builder("ShareMemCommBuilder").load()


def deepspeed_engine(model, learner, lr: float, gas: int, dtype: str):
    """A DeepSpeed engine with AdamW and the learner spec's ZeRO stage, micro-batch and clipping."""
    import deepspeed

    trainable = [p for p in model.parameters() if p.requires_grad]  # all, or the LoRA adapters only
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=learner.weight_decay)
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


class DeepSpeedRank:
    """One data-parallel rank of a DeepSpeed group (a Ray actor each). Call `address()` on rank 0,
    then each subclass's `setup(master, ...)` on every rank."""

    def __init__(self, rank: int, world_size: int, threads: int = 1, core: int | None = None):
        pin_to_core(core, threads)
        self.rank, self.world_size = rank, world_size

    def address(self) -> tuple[str, int]:
        import ray

        return ray.util.get_node_ip_address(), free_port()

    def _join(self, master: tuple[str, int]) -> None:
        """Join the group's torch.distributed (NCCL on GPUs, gloo on CPU) through DeepSpeed."""
        import deepspeed

        clear_stale_build_locks()
        os.environ.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")

    def _start_engine(self, model, learner, lr: float, per_rank: int, dtype: str, pad_id: int) -> None:
        """`per_rank` samples per optimizer step, in micro-batches of `learner.micro_batch`."""
        self.micro_batch, self.pad_id = learner.micro_batch, pad_id
        self.gas = per_rank // learner.micro_batch
        self.engine = deepspeed_engine(model, learner, lr, self.gas, dtype)

    def _micro_batches(self, batch: TokenBatch) -> Iterator[MicroBatch]:
        for start in range(0, len(batch), self.micro_batch):
            rows = range(start, min(start + self.micro_batch, len(batch)))
            yield micro_batch(batch, rows, self.pad_id, self.engine.device)

    def _backward(self, loss: torch.Tensor) -> None:
        """Backward and (at the last micro-batch) the optimizer step. The loss is normalised by the
        whole step's counts; DeepSpeed averages gradients over ranks and scales by 1/GAS, so
        multiplying those back gives exactly the full-batch gradient, however the batch was split."""
        self.engine.backward(loss * self.world_size * self.gas)
        self.engine.step()

    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag)

    def load_checkpoint(self, directory: str, tag: str) -> None:
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
