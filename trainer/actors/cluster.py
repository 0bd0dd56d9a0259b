"""Ray plumbing for one job: connect, reserve one placement group, start the actors, tear down.
It runs in the driver; the actors it starts are the other modules of this package
(docs/architecture.md, "Processes").

With no `RAY_ADDRESS` a local Ray starts in-process; with it, the job joins that cluster. Each
actor reserves a fractional CPU share and runs torch on one thread, so a 2-core machine fits two
rollout workers, two learner ranks and a reward worker without oversubscribing its cores. The
bundles are `trainer/spec/placement.py`'s, which the control plane checks against the cluster at
submission; a role's custom resources (`rollout.resources`, `learner.resources`) put its actors
on the nodes that have them (README, "Scale out").
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from trainer.actors.affinity import CoreShare, local_core_count, local_cpu_cores, share_cores, threads_each
from trainer.actors.classifier import OutcomeClassifier
from trainer.actors.critic import Critic
from trainer.actors.learner import Learner
from trainer.actors.reward_worker import RewardWorker
from trainer.actors.rollout_worker import RolloutWorker
from trainer.spec.placement import REWARD_WORKER_CPUS, Role, bundles, holds, job_roles, unfit

LOST_NODES_NAMED = 3

# Quiet, single-threaded actors; the driver's import path so `import_path` rewards resolve there too.
_ACTOR_ENV = {
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "VLLM_LOGGING_LEVEL": "WARNING",  # vLLM logs every weight reload and prefix-cache reset at INFO
    "OMP_NUM_THREADS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning,ignore::UserWarning",
}


def connect() -> None:
    """Join `RAY_ADDRESS`, or start a local Ray bound to loopback."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = dict(_ACTOR_ENV, PYTHONPATH=os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]]))
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, logging_level="WARNING")
        return
    try:
        import torch

        if not torch.cuda.is_available():
            env["DS_ACCELERATOR"] = "cpu"
    except ImportError:
        pass
    ray.init(include_dashboard=False, runtime_env={"env_vars": env}, logging_level="WARNING",
             _node_ip_address="127.0.0.1")


@dataclass
class JobActors:
    workers: list
    learners: list
    rewarder: object
    pg: object
    zero_stage: int
    weights_version: int = 0
    """The policy version the rollout workers hold (the step whose weights they last received)."""
    critics: list = field(default_factory=list)
    """PPO's value-model ranks (empty for the critic-free algorithms)."""
    weight_transfer: str = "object_store"
    """How step 6 moves the weights (`rollout.vllm.weight_transfer`; `nccl` on GPUs only)."""

    def shutdown(self) -> None:
        for actor in [*self.workers, *self.learners, *self.critics, self.rewarder]:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.pg)


def _reserve(roles: list[Role], timeout_s: float):
    """A placement group for the roles' bundles, or, past `timeout_s`, a clear error: what the
    job needs, what the live nodes lack, and the nodes that had it and died."""
    pg = placement_group(bundles(roles), strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(f"the cluster could not place this job within {timeout_s:g} s: "
                           + _why_unplaced(roles)) from None
    return pg


def _why_unplaced(roles: list[Role]) -> str:
    live = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    refusal = unfit(roles, live)
    if refusal is None:
        need = bundles(roles)
        why = (f"it needs {sum(b['CPU'] for b in need):g} CPUs at once, which the live nodes have in all but "
               f"not free (resources now free: {ray.available_resources()})")
    else:
        why = f"{refusal[0]}: {refusal[1]}"
    short = [r for r in roles if r.count > sum(holds(n, r.bundle) for n in live)]
    lost = _lost_nodes(short)
    if lost:
        why += "; " + ("the node that had them died: " if len(lost) == 1 else "the nodes that had them died: ") + \
            ", ".join(lost)
    return why


def _lost_nodes(roles: list[Role]) -> list[str]:
    """The dead nodes (the latest first) that could hold an actor of these roles, each as
    `id (address, reason)`; none where the cluster's state cannot be read."""
    if not roles:
        return []
    try:
        from ray.util.state import list_nodes

        dead = list_nodes(filters=[("state", "=", "DEAD")], detail=True, raise_on_missing_output=False)
    except Exception:  # noqa: BLE001 - the dead nodes are context for an error already on its way
        return []
    could = [n for n in dead if any(holds(n.resources_total or {}, r.bundle) for r in roles)]
    could.sort(key=lambda n: n.end_time_ms or 0, reverse=True)
    return [f"{n.node_id} ({n.node_ip}, {n.state_message or 'dead'})" for n in could[:LOST_NODES_NAMED]]


def _in_bundle(pg, index: int, cpus: float, gpus: float) -> dict:
    return dict(num_cpus=cpus, num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index))


def start_actors(spec) -> JobActors:
    """Reserve the job's placement group and start every actor in it; learners are set up too.

    One bundle per actor, except with `rollout.vllm.sleep` on GPUs: rollout worker i then shares
    learner rank i's bundle and GPU (half each), and its engine sleeps while the learner trains."""
    rollout, learner = spec.rollout, spec.learner
    gpu = 1 if _cluster_has_gpus() else 0
    colocate = bool(gpu) and rollout.engine == "vllm" and rollout.vllm.sleep
    critic_ranks = spec.algorithm.critic_world_size(learner.ranks)
    share = 0.5 if colocate else gpu

    roles = job_roles(spec, gpus=bool(gpu))
    reward_bundle = sum(r.count for r in roles) - 1
    first_learner = 0 if colocate else rollout.workers  # worker i sits in bundle i: its own, or rank i's
    first_critic = first_learner + learner.ranks
    pg = _reserve(roles, spec.schedule.placement_timeout_s)

    def opts(index: int, cpus: float, gpus: float):
        return _in_bundle(pg, index, cpus, gpus)

    pin = local_cpu_cores()
    cores = share_cores(rollout.workers, learner.ranks, rollout.max_staleness > 0, local_core_count()) if pin \
        else CoreShare(1, 1, 0)

    def slot(i: int) -> int | None:
        return i if pin else None

    workers = [ray.remote(RolloutWorker).options(**opts(i, rollout.num_cpus, share))
               .remote(rollout.engine, spec.model.path, spec.rollout_dtype, cores.worker_threads, slot(i),
                       (spec.environment.name, spec.environment.config), rollout.vllm.model_dump())
               for i in range(rollout.workers)]
    learners = [ray.remote(Learner).options(**opts(first_learner + r, learner.num_cpus, share))
                .remote(r, learner.ranks, cores.rank_threads, slot(cores.first_rank_slot + r))
                for r in range(learner.ranks)]
    critics = [ray.remote(Critic).options(**opts(first_critic + r, learner.num_cpus, gpu))
               .remote(r, critic_ranks, cores.rank_threads, slot(cores.first_rank_slot + r))
               for r in range(critic_ranks)]
    rewarder = ray.remote(RewardWorker).options(**opts(reward_bundle, REWARD_WORKER_CPUS, 0)).remote(spec.rewards)
    transfer = rollout.vllm.weight_transfer if rollout.engine == "vllm" else "object_store"
    actors = JobActors(workers, learners, rewarder, pg, learner.zero_stage, critics=critics, weight_transfer=transfer)
    try:
        samples = spec.rollout.prompts_per_step * spec.algorithm.group_size
        master = ray.get(learners[0].address.remote())
        ready = [lr.setup.remote(master, spec.model.path, spec.learner_dtype, learner, spec.algorithm,
                                 rollout.temperature, rollout.max_new_tokens,
                                 samples // learner.ranks // spec.mini_batches) for lr in learners]
        if critics:
            critic_master = ray.get(critics[0].address.remote())
            ready += [c.setup.remote(critic_master, spec.model.path, spec.learner_dtype, learner,
                                     spec.algorithm.critic_lr, spec.algorithm.value_clip,
                                     samples // critic_ranks // spec.mini_batches) for c in critics]
        ray.get(ready + [w.__ray_ready__.remote() for w in workers] + [rewarder.names.remote()])
        if transfer == "nccl":
            if not gpu:
                raise RuntimeError("rollout.vllm.weight_transfer: `nccl` needs GPUs, and this cluster has none "
                                   "(use `object_store`)")
            ray.get([lr.open_weight_transfer.remote(workers) for lr in learners])
    except BaseException:
        actors.shutdown()
        raise
    return actors


@dataclass
class ClassifierActors:
    """An outcome_model job's actors: the classifier's DeepSpeed ranks, nothing else."""

    ranks: list
    pg: object

    def shutdown(self) -> None:
        for actor in self.ranks:
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.pg)


def start_classifiers(spec) -> ClassifierActors:
    """The outcome model's ranks (`learner.ranks`, each `learner.num_cpus`), set up."""
    learner = spec.learner
    gpu = 1 if _cluster_has_gpus() else 0
    pg = _reserve(job_roles(spec, gpus=bool(gpu)), spec.schedule.placement_timeout_s)
    pin = local_cpu_cores()
    threads = threads_each(learner.ranks, local_core_count()) if pin else 1
    ranks = [ray.remote(OutcomeClassifier).options(**_in_bundle(pg, r, learner.num_cpus, gpu))
             .remote(r, learner.ranks, threads, r if pin else None) for r in range(learner.ranks)]
    actors = ClassifierActors(ranks, pg)
    try:
        master = ray.get(ranks[0].address.remote())
        per_rank = spec.rollout.prompts_per_step // learner.ranks
        get_all([c.setup.remote(master, spec.model.path, spec.learner_dtype, learner, per_rank) for c in ranks])
    except BaseException:
        actors.shutdown()
        raise
    return actors


def get_all(refs: list) -> list:
    """`ray.get` of every ref, failing as soon as any one fails. The ranks of a DeepSpeed group
    wait for each other in collectives: when one dies, the others block until gloo's or NCCL's
    timeout (30 minutes), and a plain `ray.get` of the list would wait for them that long."""
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)  # raises now if that rank failed
    return ray.get(refs)


def _cluster_has_gpus() -> bool:
    return ray.cluster_resources().get("GPU", 0) > 0
