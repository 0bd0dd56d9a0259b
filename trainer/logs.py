"""The log format of Flywheel's cluster-side and serving processes: time, level, what the process
works for (a job id, a check's folder, a deployment) and the logger, on stderr."""

from __future__ import annotations

import logging
import sys


def configure_logging(tag: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname)s {tag} %(name)s: %(message)s")
