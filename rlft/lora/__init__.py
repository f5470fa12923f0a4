"""Adapters on the policy (`lora.kind`): LoRA, PoLAR, RefLoRA, RefLoRA-S; merge and export.

The learner calls `apply_lora(model, cfg.lora)` once, `lora_before_step(model, optimizer, step)`
between backward and clipping + optimizer.step(), and sends `merged_state_dict(model)` to the
rollout engine at each weight sync.
"""

from rlft.lora.export import export_peft_adapter, merged_state_dict, save_merged
from rlft.lora.hooks import LORA_KINDS, landing_field, lora_before_step
from rlft.lora.layers import LoraLinear, apply_lora, lora_layers

__all__ = [
    "LORA_KINDS", "LoraLinear", "apply_lora", "export_peft_adapter", "landing_field", "lora_before_step", "lora_layers",
    "merged_state_dict", "save_merged",
]
