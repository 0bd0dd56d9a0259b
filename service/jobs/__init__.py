"""Jobs: their logic (creation, states, reports), the scheduler, the Ray Jobs launcher, and the
cluster-side checks that validate a spec's team code and data before a job is accepted."""
