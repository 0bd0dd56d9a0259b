"""Convert a GGUF checkpoint (the llama.cpp format) into a Hugging Face folder that every part of
Flywheel loads the normal way: the tokenizer with its chat template, the config, and the weights
dequantized into safetensors.

    python -m trainer.gguf SmolLM2-135M-Instruct.Q4_1.gguf runs/smollm2-135m-instruct
    flywheel models import-gguf FILE.gguf DIR          (the same, from the CLI)

transformers reads GGUF through the `gguf` package and dequantizes it, but refuses to save a
model it loaded that way; the weights are copied into a plain model built from the same config.
A quantized checkpoint's rounding noise is baked into the weights: it is still the real model,
and training goes on from there in full precision.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DTYPES = ("float32", "bfloat16")


class GGUFImportError(ValueError):
    """The file is not a GGUF checkpoint transformers can read."""


def import_gguf(gguf_file: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write `out_dir` (config, generation config, tokenizer with chat template, safetensors)
    from `gguf_file`. Returns `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out = Path(gguf_file).resolve(), Path(out_dir)
    if dtype not in DTYPES:
        raise GGUFImportError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    if not src.is_file():
        raise GGUFImportError(f"{src}: no such file")
    with src.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFImportError(f"{src}: not a GGUF file (it does not start with the GGUF magic)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        loaded = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise GGUFImportError(f"{src}: transformers cannot read this GGUF checkpoint: {exc}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    model.to(getattr(torch, dtype))
    model.generation_config = loaded.generation_config
    if tokenizer.pad_token is None:  # the learner pads micro-batches; the EOS token is the usual pad
        tokenizer.pad_token = tokenizer.eos_token
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if tokenizer.chat_template is None:
        print(f"warning: {src.name} carries no chat template; set one before training on chats", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.gguf", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gguf_file")
    parser.add_argument("out_dir")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype of the saved weights")
    args = parser.parse_args(argv)
    try:
        out = import_gguf(args.gguf_file, args.out_dir, args.dtype)
    except GGUFImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = json.loads((out / "config.json").read_text())
    print(f"wrote {out}: {config.get('model_type')}, {config.get('num_hidden_layers')} layers, "
          f"hidden {config.get('hidden_size')}, vocab {config.get('vocab_size')}, {args.dtype}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
