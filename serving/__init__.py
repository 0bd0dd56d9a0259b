"""Serving a deployment over the OpenAI chat-completions API, and logging what it says.

`python -m serving support-agent` (or `flywheel serve-model support-agent`) asks the
control plane which model version the deployment serves, loads it into a generation engine (the
HF loop, or vLLM: the rollout workers' own engines) and answers `POST /v1/chat/completions` as
OpenAI does, with token logprobs: a client written for OpenAI works by changing its base URL.

Every conversation becomes one production trace (`POST /v1/traces` on the control plane), with
the version that answered it and each reply's sampled token ids and logprobs. A client ties the
turns of a conversation together with `metadata = {"conversation_id": ...}` and ends it with
`POST /v1/conversations/{id}/close` (an idle conversation is closed after a time limit; a request
without an id is a conversation of its own). Its outcome arrives later through the traces API,
under the same id.

A promotion swaps the model without dropping a request: the new version is loaded beside the
old, new conversations go to it, and conversations already under way finish on the version that
began them (so each trace has one behaviour policy), after which the old engine is let go.
"""
