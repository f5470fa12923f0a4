"""Adapters on the policy's linear layers (docs/methods.md#adapters) and `apply_lora`, which swaps them in.

Every kind adds a rank-r update to a frozen base weight W0 [out, in]:

    lora, reflora, reflora-s:  delta W = (alpha / r) · B · A       A [r, in] (Kaiming init), B [out, r] = 0
    polar:                     delta W = (alpha / r) · X · Θ · Yᵀ  X [out, r], Y [in, r] orthonormal, Θ [r, r] = 0

The kinds differ in what happens to the gradients before each optimizer step (rlft/lora/hooks.py).
Adapter weights are fp32 whatever the base's dtype (as PEFT does), inputs are cast to fp32 for them.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import torch
from torch import nn

from rlft.errors import ConfigError


class LoraLinear(nn.Module):
    """base(x) + delta W · x, with the base nn.Linear (`.base`) frozen."""

    def __init__(self, base: nn.Linear, kind: str, rank: int, alpha: float, landing_lambda: float = 5e-3,
                 reflora_warmup_steps: int = 100):
        super().__init__()
        self.base = base
        self.kind, self.rank, self.alpha, self.scaling = kind, rank, alpha, alpha / rank
        self.landing_lambda, self.reflora_warmup_steps = landing_lambda, reflora_warmup_steps
        out_features, in_features = base.weight.shape
        f32 = dict(dtype=torch.float32, device=base.weight.device)
        if kind == "polar":
            self.lora_X = nn.Parameter(torch.linalg.qr(torch.randn(out_features, rank, **f32)).Q)
            self.lora_theta = nn.Parameter(torch.zeros(rank, rank, **f32))
            self.lora_Y = nn.Parameter(torch.linalg.qr(torch.randn(in_features, rank, **f32)).Q)
        else:  # every other kind (rlft/lora/hooks.py: LORA_KINDS) is B·A, differing only in its pre-step update
            self.lora_A = nn.Parameter(torch.empty(rank, in_features, **f32))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's init
            self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **f32))

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(B [out, r], A [r, in]) with delta W = scaling · B · A (PoLAR: B = X·Θ, A = Yᵀ)."""
        if self.kind == "polar":
            return self.lora_X @ self.lora_theta, self.lora_Y.T
        return self.lora_B, self.lora_A

    def delta_weight(self) -> torch.Tensor:
        """delta W [out, in] fp32."""
        b, a = self.factors()
        return self.scaling * (b @ a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        h = x.to(torch.float32)
        if self.kind == "polar":
            delta = ((h @ self.lora_Y) @ self.lora_theta.T) @ self.lora_X.T
        else:
            delta = (h @ self.lora_A.T) @ self.lora_B.T
        return out + (self.scaling * delta).to(out.dtype)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, rank={self.rank}, alpha={self.alpha}"


def lora_layers(model: nn.Module) -> list[tuple[str, LoraLinear]]:
    """The adapter layers of `model` with their module names, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLinear)]


def apply_lora(model: nn.Module, cfg) -> None:
    """Freeze `model` and wrap every nn.Linear whose name matches a `cfg.target_modules` regex (re.search).

    `cfg` is a LoraConfig; kind 'none' leaves the model untouched. Trainable parameters afterwards
    are the adapters' only: `[p for p in model.parameters() if p.requires_grad]`.
    """
    if cfg.kind == "none":
        return
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    chosen = [(name, m) for name, m in linears if any(re.search(pat, name) for pat in cfg.target_modules)]
    if not chosen:
        examples = ", ".join(name for name, _ in linears[:6])
        raise ConfigError(f"lora.target_modules {cfg.target_modules} match no linear layer; "
                          f"the model's are e.g. {examples}")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for name, linear in chosen:
        if uses[id(linear.weight)] > 1:
            raise ConfigError(f"lora.target_modules matches {name!r}, whose weight is tied to another parameter "
                              "(e.g. lm_head and embed_tokens); leave it out of the patterns")
    for p in model.parameters():
        p.requires_grad_(False)
    for name, linear in chosen:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        adapter = LoraLinear(linear, cfg.kind, cfg.rank, cfg.alpha, cfg.landing_lambda, cfg.reflora_warmup_steps)
        setattr(parent, attr, adapter)
