"""Run the service as `flywheel serve` does and, once it has shut down, write its process id and
every module it imported to the file named by $RECORD_MODULES (for tests that check a team's
code and torch never enter the API process).

    RECORD_MODULES=/tmp/modules.json python tests/service/serve_recording_modules.py PORT
"""

import json
import os
import signal
import sys
from pathlib import Path

import uvicorn

from service.core.config import Settings
from service.main import create_app, uvicorn_options


def record(*_) -> None:
    Path(os.environ["RECORD_MODULES"]).write_text(json.dumps({"pid": os.getpid(), "modules": sorted(sys.modules)}))
    sys.exit(0)


if __name__ == "__main__":
    port = int(sys.argv[1])
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler in place before it.
    signal.signal(signal.SIGTERM, record)
    settings = Settings(host="127.0.0.1", port=port)
    uvicorn.run(create_app(settings), **uvicorn_options(settings))
    record()
