"""What a job asks of the cluster (trainer/spec/placement.py): the bundles the driver reserves,
in its order, and which jobs no cluster of given nodes could ever hold, with the field to blame."""

import pytest

from trainer.spec import SpecError, parse_spec
from trainer.spec.placement import bundles, job_roles, unfit

BASE = {"model": {"path": "m"}, "rewards": [{"name": "regex", "config": {"pattern": "x"}}]}
TWO_CPUS = "the cluster: 1 node, 2 CPU and 0 GPU in all, its largest node 2 CPU and 0 GPU"


def job(**sections) -> dict:
    return {**BASE, **sections}


def roles(gpus: bool = False, **sections):
    return job_roles(parse_spec(job(**sections)), gpus)


def test_one_bundle_per_actor_in_the_drivers_order():
    assert bundles(roles()) == [{"CPU": 0.4}] * 4 + [{"CPU": 0.1}]  # 2 workers, 2 ranks, the reward worker
    placed = roles(rollout={"resources": {"rollout_node": 0.01}}, learner={"num_cpus": 1, "resources": {"big": 2}})
    assert bundles(placed) == [{"CPU": 0.4, "rollout_node": 0.01}] * 2 + [{"CPU": 1.0, "big": 2.0}] * 2 + [{"CPU": 0.1}]
    ppo = roles(gpus=True, algorithm={"type": "ppo", "critic_ranks": 1}, learner={"micro_batch": 1})
    assert [(r.name, r.count, r.bundle) for r in ppo] == [
        ("rollout worker", 2, {"CPU": 0.4, "GPU": 1.0}), ("learner rank", 2, {"CPU": 0.4, "GPU": 1.0}),
        ("critic rank", 1, {"CPU": 0.4, "GPU": 1.0}), ("reward worker", 1, {"CPU": 0.1})]


def test_a_sleeping_engine_shares_its_learner_ranks_bundle_on_gpus_only():
    sleep = {"engine": "vllm", "vllm": {"sleep": True}, "resources": {"r": 1}}
    on_gpus = roles(gpus=True, rollout=sleep, learner={"resources": {"l": 1}})
    assert [(r.name, r.count, r.bundle) for r in on_gpus] == [
        ("learner rank with its rollout worker", 2, {"CPU": 0.8, "GPU": 1.0, "l": 1.0, "r": 1.0}),
        ("reward worker", 1, {"CPU": 0.1})]
    assert [r.count for r in roles(rollout=sleep)] == [2, 2, 1]  # on CPUs each worker has its own


def test_an_outcome_model_job_places_its_classifier_ranks_only():
    spec = {"model": {"path": "m"}, "environment": {"name": "traces", "config": {"snapshot": "s.parquet"}},
            "algorithm": {"type": "outcome_model"}, "learner": {"ranks": 4, "micro_batch": 1, "num_cpus": 0.5}}
    assert bundles(job_roles(parse_spec(spec), gpus=False)) == [{"CPU": 0.5}] * 4


def test_what_fits_an_idle_cluster_is_never_refused():
    assert unfit(roles(), [{"CPU": 1.7}]) is None  # exactly: 4 × 0.4 + 0.1
    assert unfit(roles(), [{"CPU": 0.85}, {"CPU": 0.85}]) is None  # split over two nodes
    assert unfit(roles(), []) is None  # no nodes known: nothing to judge by
    placed = roles(rollout={"resources": {"rollout_node": 0.01}}, learner={"resources": {"learner_node": 0.01}})
    assert unfit(placed, [{"CPU": 2, "learner_node": 1}, {"CPU": 2, "rollout_node": 1}]) is None


def test_one_actor_bigger_than_every_node_blames_its_size():
    assert unfit(roles(learner={"num_cpus": 4}), [{"CPU": 2.0}, {"CPU": 2.0}]) == (
        "learner.num_cpus", "each learner rank reserves 4 CPU, and no node has 4 CPU; the cluster: 2 nodes, 4 CPU and "
        "0 GPU in all, its largest node 2 CPU and 0 GPU")
    assert unfit(roles(rollout={"resources": {"rollout_node": 0.01}}), [{"CPU": 2.0}]) == (
        "rollout.resources", f"each rollout worker reserves 0.4 CPU, 0.01 rollout_node, and no node has 0.01 "
        f"'rollout_node' (none); {TWO_CPUS}")
    assert unfit(roles(rollout={"resources": {"big": 2}}), [{"CPU": 2.0, "big": 1.0}])[1].startswith(
        "each rollout worker reserves 0.4 CPU, 2 big, and no node has 2 'big' (at most 1)")
    # Each resource is on some node, but none has both: the actor's size is to blame.
    assert unfit(roles(learner={"resources": {"l": 1}}), [{"CPU": 2.0}, {"CPU": 0.2, "l": 1.0}]) == (
        "learner.num_cpus", "each learner rank reserves 0.4 CPU, 1 l, and no node has all of it; the cluster: "
        "2 nodes, 2.2 CPU and 0 GPU in all, its largest node 2 CPU and 0 GPU")


def test_more_than_the_cluster_has_in_all_blames_the_largest_count():
    assert unfit(roles(rollout={"workers": 8}), [{"CPU": 2.0}]) == (
        "rollout.workers", "the job needs 4.1 CPU at once (8 rollout workers × 0.4, 2 learner ranks × 0.4, "
        f"1 reward worker × 0.1), and the cluster has 2 in all; {TWO_CPUS}")
    assert unfit(roles(learner={"ranks": 4, "micro_batch": 2}), [{"CPU": 2.0}])[0] == "learner.ranks"
    placed = roles(rollout={"resources": {"r": 0.5}})
    assert unfit(placed, [{"CPU": 2.0, "r": 0.5}, {"CPU": 2.0}])[1].startswith(
        "the job needs 1 r at once (2 rollout workers × 0.5), and the cluster has 0.5 in all")


def test_more_actors_than_the_nodes_hold_even_alone_blames_the_count():
    nodes = [{"CPU": 1.1}] * 3 + [{"CPU": 0.5}] * 2  # 4.3 CPU in all, but a 0.6-CPU rank fits three nodes once each
    assert unfit(roles(learner={"ranks": 4, "num_cpus": 0.6, "micro_batch": 2}), nodes) == (
        "learner.ranks", "4 learner ranks of 0.6 CPU each: the nodes of this cluster hold at most 3 of them; the "
        "cluster: 5 nodes, 4.3 CPU and 0 GPU in all, its largest node 1.1 CPU and 0 GPU")


def test_counts_and_shares_no_cluster_runs_are_refused_by_the_schema():
    def errors(**sections) -> dict[str, str]:
        with pytest.raises(SpecError) as err:
            parse_spec(job(**sections))
        return {e["field"]: e["message"] for e in err.value.errors}

    assert "less than or equal to 256" in errors(rollout={"workers": 1000, "num_cpus": 0.01})["rollout.workers"]
    assert "less than or equal to 256" in errors(learner={"ranks": 257})["learner.ranks"]
    assert "greater than or equal to 0.01" in errors(learner={"num_cpus": 0.001})["learner.num_cpus"]
    assert errors(algorithm={"type": "ppo", "critic_ranks": 512})["algorithm.critic_ranks"] == (
        "512 critic ranks; expected at most 256 (each is a Ray actor with a copy of the value model)")
    assert "'CPU' is not a custom resource" in errors(rollout={"resources": {"CPU": 1}})["rollout.resources"]
    assert "greater than 0" in errors(learner={"resources": {"l": 0}})["learner.resources.l"]
