"""4-bit optimizer state (docs/methods.md#4-bit-adamw): codebooks, packing, and the torch path of the fused step.

The first moment m is stored as signed codes of the dynamic-exponent codebook, one fp32 absmax
scale per block of `block` elements. The second moment v is stored as codes of the zero-free
linear codebook {k/16}: 2-D tensors are normalized rank-1 (scale_ij = min(rowmax_i, colmax_j),
so no element exceeds its scale), 1-D tensors per block. Codes are rounded to nearest and packed
two per byte (element 2k in the low nibble, 2k+1 in the high one). `step_quantized` is the torch
reference of the Triton kernel in rlft/optim/kernels.py: same inputs, same state layout.
"""

from __future__ import annotations

import math

import torch

_DYNAMIC = [0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875]
DYNAMIC_CODES = torch.tensor(sorted([-x for x in _DYNAMIC] + [0.0] + _DYNAMIC + [1.0]), dtype=torch.float32)
LINEAR_CODES = torch.arange(1, 17, dtype=torch.float32) / 16  # no zero: 1/sqrt(v) stays finite
ADAFACTOR_EPS = 1e-30  # added to g^2 before the row/column means, as in Adafactor


def midpoints(codes: torch.Tensor) -> torch.Tensor:
    """The 15 decision boundaries of a sorted 16-entry codebook (round to nearest; ties go down)."""
    return (codes[1:] + codes[:-1]) / 2


def _encode(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Nearest-code indices (int64) of normalized values: the number of midpoints below x."""
    return torch.bucketize(x, midpoints(codes).to(x.device))


def _pack(idx: torch.Tensor) -> torch.Tensor:
    """[n] indices in 0..15 -> [ceil(n/2)] uint8, element 2k in the low nibble."""
    if idx.numel() % 2:
        idx = torch.cat([idx, idx.new_zeros(1)])
    idx = idx.to(torch.uint8)
    return idx[0::2] | (idx[1::2] << 4)


def _unpack(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of _pack: [numel] int64 indices."""
    return torch.stack([packed & 15, packed >> 4], dim=1).flatten()[:numel].long()


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """Flat x zero-padded to whole blocks, as [nblocks, block]."""
    flat = x.reshape(-1)
    pad = (-flat.numel()) % block
    return torch.nn.functional.pad(flat, (0, pad)).view(-1, block)


def _safe_div(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale with 0 where the scale is 0 (then x is 0 too)."""
    return torch.where(scale > 0, x / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(x))


def quantize_blockwise(x: torch.Tensor, codes: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed codes [ceil(numel/2)] uint8, absmax scales [nblocks] fp32) of x in blocks of `block`."""
    blocks = _blocks(x.float(), block)
    scale = blocks.abs().amax(dim=1)
    idx = _encode(_safe_div(blocks, scale[:, None]), codes.to(x.device)).flatten()[: x.numel()]
    return _pack(idx), scale


def dequantize_blockwise(
    packed: torch.Tensor, scale: torch.Tensor, codes: torch.Tensor, block: int, numel: int
) -> torch.Tensor:
    """[numel] fp32 values of blockwise codes."""
    values = codes.to(packed.device)[_unpack(packed, numel)]
    pad = (-numel) % block
    values = torch.nn.functional.pad(values, (0, pad)).view(-1, block) * scale[:, None]
    return values.flatten()[:numel]


def as_matrix(x: torch.Tensor) -> torch.Tensor:
    """The 2-D view used for rank-1 and factored statistics: [shape[0], rest]."""
    return x.reshape(x.shape[0], -1)


def quantize_rank1(x: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed codes, rowmax [rows] fp32, colmax [cols] fp32) of a non-negative tensor (>= 2-D)."""
    mat = as_matrix(x.float())
    rowmax, colmax = mat.amax(dim=1), mat.amax(dim=0)
    scale = torch.minimum(rowmax[:, None], colmax[None, :])
    return _pack(_encode(_safe_div(mat, scale), codes.to(x.device)).flatten()), rowmax, colmax


def dequantize_rank1(packed: torch.Tensor, rowmax: torch.Tensor, colmax: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """[rows, cols] fp32 values of rank-1 normalized codes."""
    rows, cols = rowmax.numel(), colmax.numel()
    values = codes.to(packed.device)[_unpack(packed, rows * cols)].view(rows, cols)
    return values * torch.minimum(rowmax[:, None], colmax[None, :])


def factored_stats_update(state: dict, grad: torch.Tensor, beta2: float) -> None:
    """Adafactor's row/column means of g^2 (state v_row [rows], v_col [cols]) updated in place."""
    g2 = as_matrix(grad.float()).square().add_(ADAFACTOR_EPS)
    state["v_row"].mul_(beta2).add_(g2.mean(dim=1), alpha=1 - beta2)
    state["v_col"].mul_(beta2).add_(g2.mean(dim=0), alpha=1 - beta2)


def factored_row_scale(state: dict) -> torch.Tensor:
    """Row statistics over their mean: the v estimate is row_i / mean(row) * col_j."""
    return state["v_row"] / state["v_row"].mean()


def adamw_apply(p: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hp: dict) -> None:
    """Decoupled decay and the bias-corrected Adam step on p (fp32 math), in torch's AdamW order."""
    p32 = p.float() if p.dtype != torch.float32 else p
    p32.mul_(1 - hp["lr"] * hp["weight_decay"])
    denom = v.sqrt().div_(hp["bc2_sqrt"]).add_(hp["eps"])
    p32.addcdiv_(m.view_as(p32), denom.view_as(p32), value=-hp["lr"] / hp["bc1"])
    if p32 is not p:
        p.copy_(p32)


def hyperparams(group: dict, step: int) -> dict:
    """The scalars of one AdamW step: lr, betas, eps, decay and the bias corrections at `step` (1-based)."""
    beta1, beta2 = group["betas"]
    return {
        "lr": group["lr"], "beta1": beta1, "beta2": beta2, "eps": group["eps"],
        "weight_decay": group["weight_decay"], "bc1": 1 - beta1**step, "bc2_sqrt": math.sqrt(1 - beta2**step),
    }


def step_quantized(p: torch.Tensor, grad: torch.Tensor, state: dict, hp: dict, block: int) -> None:
    """One AdamW step of p with 4-bit state: dequantize -> update -> requantize (torch path).

    `state` holds m_codes/m_scale and either v_codes with v_rowmax/v_colmax (2-D) or v_scale
    (1-D), or v_row/v_col (factored, no v codes).
    """
    g = grad.float().reshape(-1)
    n = p.numel()
    m = dequantize_blockwise(state["m_codes"], state["m_scale"], DYNAMIC_CODES, block, n)
    m.mul_(hp["beta1"]).add_(g, alpha=1 - hp["beta1"])
    if "v_row" in state:
        factored_stats_update(state, grad, hp["beta2"])
        v = (factored_row_scale(state)[:, None] * state["v_col"][None, :]).reshape(-1)
    else:
        if "v_rowmax" in state:
            v = dequantize_rank1(state["v_codes"], state["v_rowmax"], state["v_colmax"], LINEAR_CODES).reshape(-1)
        else:
            v = dequantize_blockwise(state["v_codes"], state["v_scale"], LINEAR_CODES, block, n)
        v.mul_(hp["beta2"]).addcmul_(g, g, value=1 - hp["beta2"])
    adamw_apply(p, m, v, hp)
    state["m_codes"], state["m_scale"] = quantize_blockwise(m, DYNAMIC_CODES, block)
    if "v_rowmax" in state:
        v_mat = v.view(state["v_rowmax"].numel(), -1)
        state["v_codes"], state["v_rowmax"], state["v_colmax"] = quantize_rank1(v_mat, LINEAR_CODES)
    elif "v_scale" in state:
        state["v_codes"], state["v_scale"] = quantize_blockwise(v, LINEAR_CODES, block)
