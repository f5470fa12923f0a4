"""4-bit AdamW (Li, Chen, Zhu, NeurIPS 2023; docs/methods.md#4-bit-adamw): 'adamw-4bit' and 'adamw-4bit-factor'.

Tensors with more than `min_numel` elements keep 4-bit moments (rlft/optim/quant4.py); smaller
ones (norms, biases) keep fp32 moments like torch's AdamW, under the same key names. Each step
dequantizes one tensor's moments, applies the AdamW update and requantizes them, so the fp32
copies exist for one tensor at a time. On CUDA the step is one fused Triton kernel per tensor
(rlft/optim/kernels.py); elsewhere, or without Triton, the torch path in quant4 runs.
"""

from __future__ import annotations

from typing import Iterable

import torch

from rlft.optim import quant4
from rlft.optim.base import CompactAdamW
from rlft.optim.registry import OPTIMIZERS


class AdamW4bit(CompactAdamW):
    """AdamW with 4-bit first moment and a 4-bit (or, with `factor_second_moment`, factorized) second moment."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_numel: int = 4096,
        block_size: int = 128,
        factor_second_moment: bool = False,
    ):
        if block_size % 2:
            raise ValueError(f"block_size must be even (two codes per byte), got {block_size}")
        super().__init__(params, lr, betas, eps, weight_decay)
        self.min_numel, self.block_size, self.factor = min_numel, block_size, factor_second_moment

    def _init_state(self, p: torch.Tensor, index: int, state: dict) -> None:
        if p.numel() <= self.min_numel:
            self._fp32_moments(p, state)
            return
        f32 = dict(dtype=torch.float32, device=p.device)
        zeros = torch.zeros(p.numel(), **f32)
        state["m_codes"], state["m_scale"] = quant4.quantize_blockwise(zeros, quant4.DYNAMIC_CODES, self.block_size)
        if p.dim() >= 2 and self.factor:
            rows, cols = quant4.as_matrix(p).shape
            state["v_row"], state["v_col"] = torch.zeros(rows, **f32), torch.zeros(cols, **f32)
        elif p.dim() >= 2:
            v_zeros = quant4.as_matrix(zeros.view_as(p))
            state["v_codes"], state["v_rowmax"], state["v_colmax"] = quant4.quantize_rank1(v_zeros, quant4.LINEAR_CODES)
        else:
            state["v_codes"], state["v_scale"] = quant4.quantize_blockwise(zeros, quant4.LINEAR_CODES, self.block_size)

    def _compact_step(self, p: torch.Tensor, grad: torch.Tensor, state: dict, hp: dict) -> None:
        if p.is_cuda and _triton_step() is not None and self.block_size & (self.block_size - 1) == 0:
            _triton_step()(p, grad, state, hp, self.block_size)
        else:
            quant4.step_quantized(p, grad, state, hp, self.block_size)


def _triton_step():
    """The fused kernel's launcher, or None without Triton (imported on first use: a CPU run never loads it)."""
    from rlft.optim import kernels

    return kernels.step_quantized_triton if kernels.HAS_TRITON else None


@OPTIMIZERS.register("adamw-4bit")
def build_adamw_4bit(params: Iterable, cfg) -> torch.optim.Optimizer:
    """4-bit m (blockwise dynamic-exponent) and 4-bit v (rank-1 linear), docs/methods.md#4-bit-adamw."""
    return AdamW4bit(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                     min_numel=cfg.quant_min_numel, block_size=cfg.quant_block_size)


@OPTIMIZERS.register("adamw-4bit-factor", needs={"whole_matrices"})  # factors v by rows and columns
def build_adamw_4bit_factor(params: Iterable, cfg) -> torch.optim.Optimizer:
    """4-bit m and Adafactor-factorized v for tensors of 2 or more dimensions."""
    return AdamW4bit(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                     min_numel=cfg.quant_min_numel, block_size=cfg.quant_block_size, factor_second_moment=True)
