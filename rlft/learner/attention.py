"""SDPA in fp32 inside a bf16-autocast learner on a CPU.

Under `learner.autocast=bfloat16` the matmuls of the linear layers run in bf16 (AMX on this CPU: ~2.5-3x the
fp32 GEMM at the embedded model's shapes), but autocast also casts scaled_dot_product_attention to bf16, and
CPU flash attention's bf16 backward is ~5-8x its fp32 one at short sequences, which cost more than the linear
layers saved (the bf16 learner step was slower than fp32). This attention function runs SDPA on fp32 copies of
q, k and v with autocast off; it is registered with transformers' AttentionInterface under `NAME`, so models
keep their own forward and only the attention call changes. On a GPU autocast attention is fast: not used.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "rlft_sdpa_fp32"


def sdpa_fp32_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention on fp32 q, k, v with autocast off (the output stays fp32: the next linear
    layer casts it back to bf16 under autocast)."""
    with torch.autocast(query.device.type, enabled=False):
        return sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


def use_fp32_attention(model: torch.nn.Module) -> bool:
    """Switch an SDPA model's attention to `sdpa_fp32_attention` (masks as SDPA takes them); False if the model
    uses another attention (eager, flash) and was left alone."""
    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return False
    AttentionInterface.register(NAME, sdpa_fp32_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True
