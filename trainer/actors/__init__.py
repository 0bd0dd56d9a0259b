"""The Ray actors of a job — rollout workers and their engines, learner and critic ranks, the
reward worker — and `cluster`, which places and starts them (docs/architecture.md, "Processes").
Each module is written for the process it runs in; the data they exchange is `trainer.types`."""
