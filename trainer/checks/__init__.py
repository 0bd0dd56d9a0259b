"""Checks that run a team's code or read its data before a job is accepted: preflight, the dry
run, and scoring samples with one reward module. The control plane runs them on the cluster as
`python -m trainer.checks FOLDER` (see `__main__`); the trainer's driver runs preflight itself."""
