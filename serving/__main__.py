"""`python -m serving DEPLOYMENT`: serve a deployment over the OpenAI API (see the package).

    FLYWHEEL_URL=http://127.0.0.1:8000 FLYWHEEL_API_KEY=fw_... python -m serving support-agent --port 8100
    # callers need a key of the deployment: flywheel deploy keys create support-agent
    # then, with any OpenAI client: base_url="http://127.0.0.1:8100/v1", api_key=<that key>
"""

from __future__ import annotations

import argparse
import logging
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
    p.add_argument("--poll-s", type=float, default=2.0,
                   help="how often to ask which version the deployment serves and which of its keys are live")
    p.add_argument("--idle-close-s", type=float, default=600.0, help="close and log a conversation idle this long")
    p.add_argument("--tool-format", choices=("none", "call"), default="none",
                   help="call: answer replies written as name(arg=value) lines as OpenAI tool calls")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="prompt and reply tokens together, at most (default: the model's context); past it, 400")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20,
                   help="refuse a request body over this many bytes (413), before parsing it")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting or running at once; past it, 429 with Retry-After")
    p.add_argument("--request-timeout-s", type=float, default=300.0,
                   help="answer a reply not done within this with a timeout error (504) instead of waiting")
    p.add_argument("--max-conversations", type=int, default=4096,
                   help="open conversations, every caller's together; a new one past it gets 429")
    p.add_argument("--max-conversations-per-key", type=int, default=512,
                   help="open conversations of one deployment key; a new one past it gets 429")
    a = p.parse_args()
    import uvicorn

    from trainer.logs import configure_logging

    configure_logging(a.deployment)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll of the control plane

    from serving.app import ServingConfig, create_app

    config = ServingConfig(a.deployment, os.environ.get("FLYWHEEL_URL", "http://127.0.0.1:8000"),
                           os.environ["FLYWHEEL_API_KEY"], a.engine, a.dtype, a.poll_s, a.idle_close_s,
                           tool_format=a.tool_format, max_model_len=a.max_model_len,
                           max_body_bytes=a.max_body_bytes, max_queue=a.max_queue,
                           request_timeout_s=a.request_timeout_s, max_conversations=a.max_conversations,
                           max_conversations_per_key=a.max_conversations_per_key)
    app = create_app(config)
    try:
        uvicorn.run(app, host=a.host, port=a.port, log_level="warning")
    except SystemExit:
        if app.state.refused:  # the start's one clear line, after uvicorn's account of it
            raise SystemExit(app.state.refused) from None
        raise


if __name__ == "__main__":
    main()
