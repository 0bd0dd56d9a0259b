"""Which failed Ray jobs the scheduler may restart: the trainer's exit status 3 (an actor or node
died under it) or no exit status at all (its node or supervisor died), never its own failures."""

from service.jobs.scheduler import cluster_failure


def test_only_the_clusters_failures_are_restartable():
    assert cluster_failure("Job entrypoint command failed with exit code 3, last available logs: ...")
    assert cluster_failure("Job supervisor actor died unexpectedly")  # no exit status: the node went
    assert cluster_failure("")  # the job vanished from Ray
    assert not cluster_failure("Job entrypoint command failed with exit code 1, last available logs: ...")
    assert not cluster_failure("Job entrypoint command failed with exit code 2. No logs available.")
    assert not cluster_failure("Job entrypoint command failed with exit code 13, last available logs: ...")
