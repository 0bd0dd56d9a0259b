"""`python -m serving DEPLOYMENT`: serve a deployment over the OpenAI API (see the package).

    FLYWHEEL_URL=http://127.0.0.1:8000 FLYWHEEL_API_KEY=fw_... python -m serving support-agent --port 8100
    # then, with any OpenAI client: base_url="http://127.0.0.1:8100/v1"
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("deployment")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    p.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                   help="hf: the written-out decode loop (fastest for toy models); vllm: from hidden ~512 up")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--poll-s", type=float, default=2.0, help="how often to ask which version the deployment serves")
    p.add_argument("--idle-close-s", type=float, default=600.0, help="close and log a conversation idle this long")
    p.add_argument("--tool-format", choices=("none", "call"), default="none",
                   help="call: answer replies written as name(arg=value) lines as OpenAI tool calls")
    a = p.parse_args()
    import uvicorn

    from trainer.logs import configure_logging

    configure_logging(a.deployment)

    from serving.app import ServingConfig, create_app

    config = ServingConfig(a.deployment, os.environ.get("FLYWHEEL_URL", "http://127.0.0.1:8000"),
                           os.environ["FLYWHEEL_API_KEY"], a.engine, a.dtype, a.poll_s, a.idle_close_s,
                           tool_format=a.tool_format)
    uvicorn.run(create_app(config), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
