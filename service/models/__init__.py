"""The model registry (`registry.py`), the promotion gate (`gate.py`) and deployments (`deployments.py`)."""
