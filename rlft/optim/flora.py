"""Flora (Hao, Cao, Mou, ICML 2024; docs/methods.md#flora): AdamW whose first moment of 2-D weights lives in a
random-projection space of rank r.

For a matrix gradient G [n, m] the momentum is kept as down(G): G·Q [n, r] with Q [m, r] when
n >= m, else Qᵀ·G [r, m] with Q [n, r] — the smaller side is projected, as in the reference
implementation, so the state is r·max(n, m). Q ~ N(0, 1/r) (so E[Q Qᵀ] = I) is regenerated
from a per-tensor seed each step and never stored. Each step

    update = ((1 − β1)·G + β1·up(M)) / (1 − β1^t)       (the current gradient enters uncompressed)
    M      ← β1·M + (1 − β1)·down(G)

and every κ steps M moves to a fresh seed: M ← M·(Q_oldᵀ Q_new), an r×r product, never n×m.
The second moment is Adafactor's row/column factorization (O(n + m)) and the step is AdamW's
(bias correction, decoupled decay), so `optim.lr` means what it means for 'adamw', plus
Adafactor's update clipping (update RMS <= 1): the reconstructed momentum carries projection
noise about sqrt(min(n, m) / r) times its signal, and clipping keeps steps Adam-sized. The
reference implementation instead builds on Adafactor throughout (momentum of the normalized
update, parameter-scaled step size). 1-D tensors and matrices with a side <= r keep fp32 AdamW
moments.

Gradient-accumulation compression (the paper's other half) is not done here: our learner sums
micro-batch gradients in .grad, clips the global norm of that sum before the step, and under
DeepSpeed ZeRO the gradient buffers belong to DeepSpeed. Compressing accumulation would need
per-parameter post-accumulate hooks that take the gradient away from both.
"""

from __future__ import annotations

from typing import Iterable

import torch

from rlft.optim import quant4
from rlft.optim.base import CompactAdamW
from rlft.optim.registry import OPTIMIZERS

_MASK64 = (1 << 63) - 1


def next_seed(seed: int) -> int:
    """A fresh projection seed from the previous one (splitmix64 step, kept in int64 range)."""
    z = (seed + 0x9E3779B97F4A7C15) & ((1 << 64) - 1)
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK64


def projection(seed: int, size: int, rank: int, device: torch.device) -> torch.Tensor:
    """Q [size, rank] ~ N(0, 1/rank), a pure function of the seed."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(size, rank, generator=gen, device=device) / rank**0.5


def _down(g: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Project the smaller side of g [n, m]: g·Q [n, r] when n >= m, else Qᵀ·g [r, m]."""
    return g @ q if g.shape[0] >= g.shape[1] else q.T @ g


def _up(c: torch.Tensor, q: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return c @ q.T if shape[0] >= shape[1] else q @ c


class Flora(CompactAdamW):
    """AdamW with Flora-compressed momentum and factorized second moment for 2-D weights."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        rank: int = 8,
        kappa: int = 1000,
        seed: int = 0,
        clip_threshold: float = 1.0,
    ):
        super().__init__(params, lr, betas, eps, weight_decay)
        self.rank, self.kappa, self.seed, self.clip_threshold = rank, kappa, seed, clip_threshold

    def _init_state(self, p: torch.Tensor, index: int, state: dict) -> None:
        if p.dim() != 2 or min(p.shape) <= self.rank:
            self._fp32_moments(p, state)
            return
        n, m = p.shape
        f32 = dict(dtype=torch.float32, device=p.device)
        state["seed"] = next_seed(self.seed * 1_000_003 + index)
        state["exp_avg_proj"] = torch.zeros((n, self.rank) if n >= m else (self.rank, m), **f32)
        state["v_row"], state["v_col"] = torch.zeros(n, **f32), torch.zeros(m, **f32)

    def _compact_step(self, p: torch.Tensor, grad: torch.Tensor, state: dict, hp: dict) -> None:
        g = grad.float()
        side = min(p.shape)  # the projected side
        q = projection(state["seed"], side, self.rank, p.device)
        if state["step"] > 1 and (state["step"] - 1) % self.kappa == 0:  # move the momentum to a fresh projection
            state["seed"] = next_seed(state["seed"])
            q_new = projection(state["seed"], side, self.rank, p.device)
            c = state["exp_avg_proj"]
            state["exp_avg_proj"] = c @ (q.T @ q_new) if p.shape[0] >= p.shape[1] else (q_new.T @ q) @ c
            q = q_new
        m = _up(state["exp_avg_proj"], q, p.shape).mul_(hp["beta1"]).add_(g, alpha=1 - hp["beta1"])
        state["exp_avg_proj"].mul_(hp["beta1"]).add_(_down(g, q), alpha=1 - hp["beta1"])
        quant4.factored_stats_update(state, g, hp["beta2"])
        v = quant4.factored_row_scale(state)[:, None] * state["v_col"][None, :]
        # The reconstructed momentum carries projection noise about sqrt(side / r) times its signal;
        # Adafactor's update clipping (RMS <= 1, as the reference implementation does) keeps steps Adam-sized.
        denom = v.sqrt_().div_(hp["bc2_sqrt"]).add_(hp["eps"])
        update = m.div_(denom).div_(hp["bc1"])
        update.div_((update.square().mean().sqrt() / self.clip_threshold).clamp_min(1.0))
        p32 = p.float() if p.dtype != torch.float32 else p
        p32.mul_(1 - hp["lr"] * hp["weight_decay"]).add_(update, alpha=-hp["lr"])
        if p32 is not p:
            p.copy_(p32)


@OPTIMIZERS.register("flora", needs={"whole_matrices"})  # projects each [out, in] gradient
def build_flora(params: Iterable, cfg) -> torch.optim.Optimizer:
    """Flora: rank-`flora_rank` projected momentum, re-projected every `flora_kappa` steps (docs/methods.md#flora)."""
    return Flora(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                 rank=cfg.flora_rank, kappa=cfg.flora_kappa)
