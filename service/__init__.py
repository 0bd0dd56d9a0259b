"""The Flywheel control plane: a FastAPI job service over Ray. It never imports torch."""
