"""Weights from the learner straight into the rollout workers' vLLM engines on GPUs, over NCCL
(`rollout.vllm.weight_transfer = "nccl"`), instead of through the Ray object store.

vLLM's native weight-transfer API has two symmetric engines: the inference side's, built by
vLLM from `WeightTransferConfig(backend="nccl")`, and the trainer side's, built here by
`WeightTransferTrainerFactory.trainer_init` on every learner rank. Learner rank 0 is the sender:
it opens one two-process NCCL group per rollout worker (itself and that worker's engine) and
drives the worker's side of each round (`start_weight_update`, `update_weights`,
`finish_weight_update`) through `WorkerClient`, a Ray call into the worker's actor. The other
ranks only take part in gathering ZeRO-3 parameters, in lockstep.

The built-in backends are GPU-only (NCCL broadcast; CUDA IPC for an engine on the learner's own
GPU), so this module is imported only where `weight_transfer = "nccl"` was asked for, and its test
is `gpu`-marked. On CPU the object store carries the state dict (`trainer.driver.weights`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ray
import torch


class WorkerClient:
    """vLLM's `VLLMWeightSyncClient` protocol over a rollout worker's Ray handle: each call runs
    the engine workers' method of the same name (`RolloutWorker.weight_transfer_rpc`)."""

    def __init__(self, worker):
        self.worker = worker

    def _call(self, method: str, **kwargs: Any) -> None:
        ray.get(self.worker.weight_transfer_rpc.remote(method, kwargs))

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._call("init_weight_transfer_engine", init_info=init_info)

    def start_weight_update(self) -> None:
        self._call("start_weight_update")

    def update_weights(self, update_info) -> None:
        self._call("update_weights", update_info=update_info)

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._call("finish_weight_update")


def deepspeed_source(module: torch.nn.Module, zero_stage: int):
    """A vLLM `WeightSource` over a DeepSpeed module: under ZeRO-3 each parameter is gathered
    (a collective: every rank iterates in the same order), otherwise it is read as it is."""
    import deepspeed
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class DeepSpeedSource(WeightSource):
        def metadata(self) -> list[ParamMeta]:
            return [ParamMeta(name, p.dtype, tuple(p.ds_shape if zero_stage == 3 else p.shape))
                    for name, p in module.named_parameters()]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            for name, p in module.named_parameters():
                if zero_stage == 3:
                    with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                        yield name, p.data.detach().clone()
                else:
                    yield name, p.data.detach()

    return DeepSpeedSource()


def open_senders(module: torch.nn.Module, zero_stage: int, rank: int, workers: list,
                 address: str, ports: list[int]) -> list:
    """One trainer-side NCCL engine per rollout worker (on rank 0 the sender; elsewhere a rank
    that only gathers). Every learner rank calls it."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

    source = deepspeed_source(module, zero_stage)
    return [WeightTransferTrainerFactory.trainer_init(
        NCCLTrainerInitInfo(master_address=address, master_port=port, world_size=2, rank=rank),
        client=WorkerClient(worker), source=source) for worker, port in zip(workers, ports, strict=True)]


def send(senders: list, version: int) -> None:
    """One round to every worker (start, broadcast, finish); then each worker records `version`,
    which its next rollout checks."""
    for engine in senders:
        engine.send_weights()
        if engine.is_sender:
            ray.get(engine.client.worker.set_version.remote(version))
