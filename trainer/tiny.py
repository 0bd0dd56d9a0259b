"""Build a tiny, randomly initialised chat model from local text: no hub needed.

Tests, the demo and the benchmarks use it: a byte-level BPE tokenizer trained on the task's own
text, a chat template, and a small Qwen2 model, saved in Hugging Face format so that everything
downstream loads it the normal way (`AutoModelForCausalLM.from_pretrained`).

    python -m trainer.tiny runs/tiny-model --corpus configs/data/digits.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def corpus_lines(path: str | Path) -> list[str]:
    """Every string value (and chat message content) of a JSONL file, or the lines of a text file."""
    path = Path(path)
    if path.suffix != ".jsonl":
        return path.read_text().splitlines()
    lines = []
    for line in path.read_text().splitlines():
        if line.strip():
            for v in json.loads(line).values():
                if isinstance(v, str | int | float):
                    lines.append(str(v))
                elif isinstance(v, list):  # chat messages
                    lines.extend(m["content"] for m in v if isinstance(m, dict) and isinstance(m.get("content"), str))
    return lines


def build_tiny_model(out_dir: str | Path, texts: list[str], vocab_size: int = 320, hidden: int = 64,
                     layers: int = 2, heads: int = 4, seed: int = 0, init_std: float = 0.02) -> Path:
    """Train a tokenizer on `texts`, build a random Qwen2 model, and save both to `out_dir`.

    `init_std` is the weights' initial standard deviation (Hugging Face's `initializer_range`). At
    the usual 0.02 the tied embeddings are so small that the output is near uniform whatever the
    hidden state: only training the embeddings themselves can sharpen it, so low-rank adapters on
    the attention and MLP layers cannot move it. At 0.2 they can, as they do on a pretrained model."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        texts + ["system user assistant"],
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        bos_token=None, unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, initializer_range=init_std,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--corpus", required=True, help="a .jsonl (all string values) or text file")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=320)
    parser.add_argument("--init-std", type=float, default=0.02, help="the weights' initial standard deviation")
    args = parser.parse_args()
    path = build_tiny_model(args.out_dir, corpus_lines(args.corpus), args.vocab, args.hidden, args.layers,
                            init_std=args.init_std)
    print(f"tiny model written to {path}")


if __name__ == "__main__":
    main()
