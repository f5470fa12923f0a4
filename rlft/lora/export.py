"""Adapters out of the learner: merged weights for rollout sync and HF checkpoints, PEFT adapter files."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from rlft.lora.layers import lora_layers


@torch.no_grad()
def merged_state_dict(model: torch.nn.Module, only_adapted: bool = False) -> dict[str, torch.Tensor]:
    """The state dict the model had before apply_lora, each adapted weight replaced by W0 + delta W (base dtype).

    `only_adapted`: just the merged weights (all that changes between syncs). Unadapted
    entries share memory with the model; copy them before the model moves on.
    """
    layers = dict(lora_layers(model))
    out = {}
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in layers:  # an adapter factor: folded into the weight below
            continue
        owner, _, part = prefix.rpartition(".")
        if part == "base" and owner in layers:  # "<layer>.base.<leaf>" was "<layer>.<leaf>"
            name = f"{owner}.{leaf}" if owner else leaf
            if leaf == "weight":
                out[name] = (value.float() + layers[owner].delta_weight()).to(value.dtype)
            elif not only_adapted:
                out[name] = value
        elif not only_adapted:
            out[key] = value
    return out


def save_merged(model: torch.nn.Module, tokenizer, path: str | Path) -> None:
    """A plain Hugging Face checkpoint of the merged weights (loadable by AutoModelForCausalLM), with the tokenizer."""
    model.save_pretrained(path, state_dict=merged_state_dict(model))
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def export_peft_adapter(model: torch.nn.Module, path: str | Path, base_model_name_or_path: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors loadable by peft.PeftModel.from_pretrained.

    Every kind exports as a plain LoRA of the same delta W (PoLAR as B = X·Θ, A = Yᵀ).
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no adapters; call rlft.lora.apply_lora first")
    tensors = {}
    for name, layer in layers:
        b, a = layer.factors()
        tensors[f"base_model.model.{name}.lora_A.weight"] = a.detach().contiguous().cpu()
        tensors[f"base_model.model.{name}.lora_B.weight"] = b.detach().contiguous().cpu()
    first = layers[0][1]
    base_name = base_model_name_or_path or getattr(getattr(model, "config", None), "_name_or_path", None)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": first.rank,
        "lora_alpha": first.alpha,
        "target_modules": [name for name, _ in layers],  # full module names: PEFT matches them exactly
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2))
