"""The driver's side of a job: each step of `trainer.loop.train()` that is more than one call,
run in the driver process, handing work to the actors (docs/architecture.md, "Processes")."""
