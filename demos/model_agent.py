"""A model folder deployed as the support agent: it samples each turn of a production conversation
and keeps what a deployment logs with it, the sampled token ids and their logprobs (so
`offline_pg` can weigh the traces by pi / pi_behaviour as logged). Used by
`python -m demos.production --agent-model FOLDER`.
"""

from __future__ import annotations

from typing import Any


class ModelAgent:
    """Samples one agent turn at a time from a Hugging Face model folder, on CPU."""

    def __init__(self, path: str, temperature: float = 1.0, max_new_tokens: int = 24, seed: int = 0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(seed)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()
        self.temperature, self.max_new_tokens = temperature, max_new_tokens

    def turn(self, messages: list[dict[str, Any]]) -> tuple[str, dict[str, list]]:
        """The agent's next message after `messages`, and its logged logprobs: the sampled token
        ids (the closing EOS included when sampled) and the logprob of each under the sampling
        distribution."""
        import torch

        tok = self.tokenizer
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      do_sample=True, temperature=self.temperature, top_k=0, top_p=1.0,
                                      max_new_tokens=self.max_new_tokens, output_scores=True,
                                      return_dict_in_generate=True, pad_token_id=tok.eos_token_id)
        sampled = out.sequences[0, len(ids):].tolist()
        if tok.eos_token_id in sampled:
            sampled = sampled[:sampled.index(tok.eos_token_id) + 1]
        logprobs = [float(torch.log_softmax(out.scores[k][0].float(), -1)[t]) for k, t in enumerate(sampled)]
        content = tok.decode([t for t in sampled if t != tok.eos_token_id], skip_special_tokens=True)
        return content, {"token_ids": sampled, "logprobs": logprobs}
