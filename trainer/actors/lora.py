"""Low-rank adapters on the learner (`learner.lora`), with peft: only the adapters train and hold
optimizer state. What leaves the learner is always a plain Hugging Face state dict — the base
weights with each adapter's update B·A·(alpha/r) added in — so the rollout engines, the exported
model and everything downstream see an ordinary model.
"""

from __future__ import annotations

import torch

ADAPTER = "default"
INIT_SEED = 0


def with_lora(model, spec):
    """`model` with adapters on `spec.target_modules` (every other weight frozen)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=list(spec.target_modules), task_type="CAUSAL_LM")
    # The adapters' random start is the same on every rank and in every run (a resumed run rebuilds
    # the model before loading its checkpoint, and two runs of one spec must match).
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        return get_peft_model(model, config)


@torch.no_grad()
def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The base model's state dict, keys as in the base checkpoint, with every adapter merged into
    its layer's weight. The training model is left as it is (nothing is merged in place)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    merged = {f"{name}.weight": layer.base_layer.weight + layer.get_delta_weight(ADAPTER)
              for name, layer in base.named_modules() if isinstance(layer, LoraLayer)}
    state = {}
    for key, value in base.state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value).detach().cpu().clone()
    return state


def tied_copies(model) -> set[str]:
    """Keys (as in `merged_state_dict`) of weights tied to an earlier one (the output layer to the
    embeddings): the engines load them, a saved checkpoint leaves them out. Ties are the same
    Parameter object under two names (storage would not do: ZeRO-3 partitions it away)."""
    seen, copies = set(), set()
    for key, param in model.get_base_model().named_parameters(remove_duplicate=False):
        if id(param) in seen:
            copies.add(key.replace(".base_layer.", "."))
        seen.add(id(param))
    return copies
