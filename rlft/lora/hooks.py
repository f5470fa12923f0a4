"""What each adapter kind does between backward and the optimizer step (docs/methods.md#adapters).

- polar: the gradients of X and Y become the landing field, computed in O(m·r²).
- reflora (after warm-up): A.grad <- S⁻¹·A.grad, B.grad <- B.grad·S, with S the geometric mean
  (A·Aᵀ)⁻¹ # (Bᵀ·B), from two r×r eigendecompositions. This equals a gradient step taken in the
  balanced refactoring (P·A, B·P⁻¹) with PᵀP = S, mapped back.
- reflora-s (after warm-up): A <- √s·A, B <- B/√s with s = ‖B‖/‖A‖, gradients and Adam moments
  rescaled to match, so the next step is taken in the balanced factorization.
- lora: nothing.

Each kind is an entry of LORA_KINDS (`lora.kind`) whose value is its per-layer pre-step update (or
None); a kind whose update needs whole gradients declares needs={"whole_gradients"}, which the
config refuses under DeepSpeed ZeRO. A new B·A kind is one entry here (PoLAR's X·Θ·Yᵀ factors
live in layers.py).
"""

from __future__ import annotations

from typing import Callable

import torch

from rlft.lora.layers import LoraLinear, lora_layers
from rlft.optim.base import scale_moments
from rlft.registry import Registry

PreStep = Callable[[LoraLinear, torch.optim.Optimizer, int], None]  # (layer, optimizer, optimizer steps taken)
LORA_KINDS: Registry[PreStep | None] = Registry("adapter kind")

EIG_FLOOR = 1e-10  # eigenvalues below this fraction of the largest are clamped (rank-deficient factors)


@torch.no_grad()
def lora_before_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
    """Call after backward (and any gradient all-reduce), before gradient clipping and optimizer.step().

    `step` counts optimizer steps already taken (0 at the first call); RefLoRA starts at
    `lora.reflora_warmup_steps`. A no-op for models without adapters.
    """
    for _, layer in lora_layers(model):
        pre_step = LORA_KINDS.get(layer.kind)
        if pre_step is not None:
            pre_step(layer, optimizer, step)


def _polar_step(layer: LoraLinear, optimizer: torch.optim.Optimizer, step: int) -> None:
    for factor in (layer.lora_X, layer.lora_Y):
        if factor.grad is not None:
            factor.grad.copy_(landing_field(factor, factor.grad, layer.landing_lambda))


def _reflora_step(layer: LoraLinear, optimizer: torch.optim.Optimizer, step: int) -> None:
    if step >= layer.reflora_warmup_steps:
        _refactor_gradients(layer)


def _reflora_s_step(layer: LoraLinear, optimizer: torch.optim.Optimizer, step: int) -> None:
    if step >= layer.reflora_warmup_steps:
        _rebalance(layer, optimizer)


LORA_KINDS.add("none", None)  # no adapter: full fine-tuning
LORA_KINDS.add("lora", None)
LORA_KINDS.add("polar", _polar_step, needs={"whole_gradients"})
LORA_KINDS.add("reflora", _reflora_step, needs={"whole_gradients"})
LORA_KINDS.add("reflora-s", _reflora_s_step, needs={"whole_gradients"})


def landing_field(x: torch.Tensor, grad: torch.Tensor, lam: float) -> torch.Tensor:
    """Λ(X) = G·(XᵀX) − X·(GᵀX) + λ·X·(XᵀX − I) for X, G [m, r]: only r×r products, never m×m."""
    xtx = x.T @ x
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return grad @ xtx - x @ (grad.T @ x) + lam * (x @ (xtx - eye))


def _sym_power(mat: torch.Tensor, powers: tuple[float, ...]) -> list[torch.Tensor]:
    """mat^p for each p of a symmetric PSD r×r matrix, from one eigendecomposition (small eigenvalues clamped)."""
    eigvals, eigvecs = torch.linalg.eigh(mat)
    eigvals = eigvals.clamp_min(EIG_FLOOR * eigvals.max().clamp_min(torch.finfo(mat.dtype).tiny))
    return [(eigvecs * eigvals.pow(p)) @ eigvecs.T for p in powers]


def geometric_mean(aat: torch.Tensor, btb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, S⁻¹) with S = (A·Aᵀ)⁻¹ # (Bᵀ·B), i.e. S·(A·Aᵀ)·S = Bᵀ·B, from two r×r eigendecompositions.

    With K = (A·Aᵀ)^½: S = K⁻¹·(K·Bᵀ·B·K)^½·K⁻¹ and S⁻¹ = K·(K·Bᵀ·B·K)^-½·K.
    """
    k, k_inv = _sym_power(aat, (0.5, -0.5))
    root, root_inv = _sym_power(k @ btb @ k, (0.5, -0.5))
    return k_inv @ root @ k_inv, k @ root_inv @ k


def _refactor_gradients(layer: LoraLinear) -> None:
    a, b = layer.lora_A, layer.lora_B
    if a.grad is None or b.grad is None or not bool(b.any()):  # B = 0 before its first update: S undefined
        return
    s, s_inv = geometric_mean((a @ a.T).double(), (b.T @ b).double())
    a.grad.copy_(s_inv.to(a.dtype) @ a.grad)
    b.grad.copy_(b.grad @ s.to(b.dtype))


def _rebalance(layer: LoraLinear, optimizer: torch.optim.Optimizer) -> None:
    a, b = layer.lora_A, layer.lora_B
    norm_a, norm_b = a.norm(), b.norm()
    # s = 1 (nothing to do) while either factor is zero; tensors, not floats: no device sync
    s = torch.where((norm_a > 0) & (norm_b > 0), norm_b / norm_a.clamp_min(1e-30), torch.ones_like(norm_a))
    root = s.sqrt()
    a.mul_(root)
    b.div_(root)
    if a.grad is not None:
        a.grad.div_(root)
    if b.grad is not None:
        b.grad.mul_(root)
    scale_moments(optimizer, a, 1 / root, 1 / s)
    scale_moments(optimizer, b, root, s)
