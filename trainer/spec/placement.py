"""What a job asks of the Ray cluster, as a pure function of its spec: the placement-group bundles
`trainer/actors/cluster.py` reserves (one per actor, in its order), and whether a cluster of
given nodes could ever hold them. The control plane refuses a job that never could when it is
submitted (`service/jobs/launcher.py::RayJobsLauncher.fits`); the driver reserves exactly these
bundles. No Ray here: the control plane imports it.

    roles = job_roles(spec, gpus=False)
    pg = placement_group(bundles(roles))               # the driver
    refusal = unfit(roles, [node_totals, ...])          # the control plane: (field, why) or None
"""

from __future__ import annotations

import math
from dataclasses import dataclass

REWARD_WORKER_CPUS = 0.1
"""The reward worker's CPU share: it waits on its reward modules most of the time."""
EPS = 1e-6
"""Slack in comparing resource amounts (Ray counts them in 1/10,000ths)."""


@dataclass(frozen=True)
class Role:
    """`count` actors of one kind, each in a placement-group bundle of its own of `bundle`."""

    name: str
    """What one of them is called in a message (`rollout worker`)."""
    count_field: str
    """The spec field that sets `count`."""
    cpus_field: str
    """The spec field that sets the bundle's CPUs."""
    resources_field: str | None
    """The spec field that sets the bundle's custom resources (None: it has none)."""
    count: int
    bundle: dict[str, float]


def job_roles(spec, gpus: bool) -> list[Role]:
    """The job's actors in the order of their bundles: the rollout workers, the learner ranks,
    the critic ranks and the reward worker; for an `outcome_model` job only the classifier's
    ranks. `gpus`: the cluster has GPUs, so each actor's bundle takes one. With
    `rollout.vllm.sleep` on GPUs rollout worker i shares learner rank i's bundle (and its GPU,
    half each), so the workers have no bundles of their own."""
    rollout, learner = spec.rollout, spec.learner

    def bundle(cpus: float, *custom: dict[str, float]) -> dict[str, float]:
        extra: dict[str, float] = {}
        for resources in custom:
            for name, amount in resources.items():
                extra[name] = extra.get(name, 0.0) + amount
        return {"CPU": cpus, **({"GPU": 1.0} if gpus else {}), **extra}

    if spec.algorithm.fits_classifier:
        return [Role("classifier rank", "learner.ranks", "learner.num_cpus", "learner.resources", learner.ranks,
                     bundle(learner.num_cpus, learner.resources))]
    colocate = gpus and rollout.engine == "vllm" and rollout.vllm.sleep
    critics = spec.algorithm.critic_world_size(learner.ranks)
    if colocate:
        roles = [Role("learner rank with its rollout worker", "learner.ranks", "learner.num_cpus", "learner.resources",
                      learner.ranks, bundle(learner.num_cpus + rollout.num_cpus, learner.resources, rollout.resources))]
    else:
        roles = [Role("rollout worker", "rollout.workers", "rollout.num_cpus", "rollout.resources", rollout.workers,
                      bundle(rollout.num_cpus, rollout.resources)),
                 Role("learner rank", "learner.ranks", "learner.num_cpus", "learner.resources", learner.ranks,
                      bundle(learner.num_cpus, learner.resources))]
    if critics:
        roles.append(Role("critic rank", "algorithm.critic_ranks", "learner.num_cpus", "learner.resources", critics,
                          bundle(learner.num_cpus, learner.resources)))
    return roles + [Role("reward worker", "rewards", "rewards", None, 1, {"CPU": REWARD_WORKER_CPUS})]


def bundles(roles: list[Role]) -> list[dict[str, float]]:
    """The placement group's bundles, one per actor, in the roles' order."""
    return [dict(role.bundle) for role in roles for _ in range(role.count)]


def holds(node: dict[str, float], bundle: dict[str, float]) -> int:
    """How many such bundles fit in one node of these total resources."""
    return min(math.floor(node.get(name, 0.0) / amount + EPS) for name, amount in bundle.items() if amount > 0)


def _amount(x: float) -> str:
    return f"{x:.4g}"


def describe(nodes: list[dict[str, float]]) -> str:
    """The cluster's size: its nodes, its CPUs and GPUs in all, and its largest node."""
    cpus, gpus = sum(n.get("CPU", 0.0) for n in nodes), sum(n.get("GPU", 0.0) for n in nodes)
    big = max(nodes, key=lambda n: (n.get("CPU", 0.0), n.get("GPU", 0.0)), default={})
    return (f"the cluster: {len(nodes)} node{'s' if len(nodes) != 1 else ''}, {_amount(cpus)} CPU and "
            f"{_amount(gpus)} GPU in all, its largest node {_amount(big.get('CPU', 0.0))} CPU and "
            f"{_amount(big.get('GPU', 0.0))} GPU")


def unfit(roles: list[Role], nodes: list[dict[str, float]]) -> tuple[str, str] | None:
    """The spec field to blame and why, where no placement of the roles' bundles on nodes of
    these total resources exists; None where one may. Only what can never fit is refused: one
    actor bigger than every node, more of a resource than the cluster has in all, or more actors
    of one kind than the nodes hold even alone (a job that fits only an idle cluster fits)."""
    if not nodes:
        return None
    where = describe(nodes)
    for role in roles:
        if role.count and not any(holds(node, role.bundle) for node in nodes):
            return _too_big(role, nodes, where)
    for name in sorted({name for role in roles for name in role.bundle}):
        need = [role.count * role.bundle.get(name, 0.0) for role in roles]
        have = sum(node.get(name, 0.0) for node in nodes)
        if sum(need) > have + EPS:
            blame = roles[need.index(max(need))]
            parts = ", ".join(f"{r.count} {r.name}{'s' if r.count != 1 else ''} × {_amount(r.bundle[name])}"
                              for r, n in zip(roles, need, strict=True) if n)
            return blame.count_field, (f"the job needs {_amount(sum(need))} {name} at once ({parts}), and "
                                       f"the cluster has {_amount(have)} in all; {where}")
    for role in roles:
        most = sum(holds(node, role.bundle) for node in nodes)
        if role.count > most:
            return role.count_field, (f"{role.count} {role.name}s of {_resources(role.bundle)} each: the nodes of "
                                      f"this cluster hold at most {most} of them; {where}")
    return None


def _too_big(role: Role, nodes: list[dict[str, float]], where: str) -> tuple[str, str]:
    """Why no node holds one actor of `role`, blaming the field of the resource that none has."""
    one = f"each {role.name} reserves {_resources(role.bundle)}"
    for name, amount in role.bundle.items():
        if name in ("CPU", "GPU"):
            continue
        most = max(node.get(name, 0.0) for node in nodes)
        if most + EPS < amount:
            found = f"at most {_amount(most)}" if most else "none"
            return role.resources_field or role.cpus_field, f"{one}, and no node has {_amount(amount)} {name!r} ({found}); {where}"
    most = max(node.get("CPU", 0.0) for node in nodes)
    if most + EPS < role.bundle["CPU"]:
        return role.cpus_field, f"{one}, and no node has {_amount(role.bundle['CPU'])} CPU; {where}"
    return role.cpus_field, f"{one}, and no node has all of it; {where}"


def _resources(bundle: dict[str, float]) -> str:
    return ", ".join(f"{_amount(amount)} {name}" for name, amount in bundle.items())
