"""Triton kernel of the 4-bit AdamW step: dequantize -> AdamW update -> requantize in one pass.

The torch reference is `rlft.optim.quant4.step_quantized` (same state layout, same arithmetic
order, so the two agree to rounding). One program owns one block of BLOCK elements = BLOCK/2
packed bytes and one m scale, so blockwise requantization needs no communication. The rank-1
v scales (row and column maxima of the new v) are global, so that mode runs two passes: the
first updates p and m and max-reduces the new v into fresh row/column buffers with atomics;
the second recomputes the same new v from the untouched old codes and encodes it with the new
scales. No fp32 copy of m or v is ever written to memory.

Importing this module without Triton works (HAS_TRITON is False); the kernel is used on CUDA.
"""

from __future__ import annotations

import torch

from rlft.optim import quant4

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the torch path in quant4 runs instead
    HAS_TRITON = False

# v storage modes of the kernel
V_BLOCKWISE, V_RANK1, V_FACTORED = 0, 1, 2

if HAS_TRITON:

    @triton.jit
    def _encode(x, mids_ptr):
        """Nearest-code index: the number of the 15 midpoints strictly below x (ties go down, as torch.bucketize)."""
        idx = tl.zeros(x.shape, dtype=tl.int32)
        for k in tl.static_range(15):
            idx += (x > tl.load(mids_ptr + k)).to(tl.int32)
        return idx

    @triton.jit
    def _safe_div(x, scale):
        return tl.where(scale > 0, x / tl.where(scale > 0, scale, 1.0), 0.0)

    @triton.jit
    def _new_moments(offs, mask, mcode, vcode, m_scale, v_blk_scale, g_ptr, v_s0_ptr, v_s1_ptr,
                     dyn_ptr, lin_ptr, ncols, beta1, omb1, beta2, omb2, V_MODE: tl.constexpr):
        """(new m, new v) of one half-block: the stored moments decoded and moved by the gradient."""
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = tl.load(dyn_ptr + mcode) * m_scale
        m = tl.where(mask, m * beta1 + omb1 * g, 0.0)
        row = offs // ncols
        col = offs % ncols
        if V_MODE == 2:  # factored: v_s0 = row / mean(row), v_s1 = col, updated by torch already
            v = tl.load(v_s0_ptr + row, mask=mask, other=0.0) * tl.load(v_s1_ptr + col, mask=mask, other=0.0)
        else:
            if V_MODE == 1:
                scale = tl.minimum(tl.load(v_s0_ptr + row, mask=mask, other=0.0),
                                   tl.load(v_s1_ptr + col, mask=mask, other=0.0))
            else:
                scale = v_blk_scale
            v = tl.load(lin_ptr + vcode) * scale
            v = tl.where(mask, v * beta2 + omb2 * g * g, 0.0)
        return m, v

    @triton.jit
    def _adam_param_update(p_ptr, offs, mask, m, v, decay, step_size, bc2_sqrt, eps):
        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = p * decay
        denom = tl.sqrt(v) / bc2_sqrt + eps
        p = p + (-step_size) * (m / denom)
        tl.store(p_ptr + offs, p, mask=mask)

    @triton.jit
    def adamw4bit_kernel(
        p_ptr, g_ptr, m_codes_ptr, m_scale_ptr, v_codes_ptr, v_s0_ptr, v_s1_ptr, new_s0_ptr, new_s1_ptr,
        dyn_ptr, dyn_mid_ptr, lin_ptr, lin_mid_ptr,
        numel, ncols, beta1, omb1, beta2, omb2, decay, step_size, bc2_sqrt, eps,
        V_MODE: tl.constexpr, PHASE: tl.constexpr, ROW_ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        half = tl.arange(0, BLOCK // 2)
        byte_offs = pid * (BLOCK // 2) + half
        even = pid * BLOCK + 2 * half
        odd = even + 1
        mask_e = even < numel
        mask_o = odd < numel
        m_bytes = tl.load(m_codes_ptr + byte_offs, mask=mask_e, other=0).to(tl.int32)
        m_scale = tl.load(m_scale_ptr + pid)
        if V_MODE == 2:
            v_bytes = m_bytes  # unused: factored v has no codes
            v_blk_scale = 0.0
        else:
            v_bytes = tl.load(v_codes_ptr + byte_offs, mask=mask_e, other=0).to(tl.int32)
            if V_MODE == 0:
                v_blk_scale = tl.load(v_s0_ptr + pid)
            else:
                v_blk_scale = 0.0
        m_e, v_e = _new_moments(even, mask_e, m_bytes & 15, v_bytes & 15, m_scale, v_blk_scale, g_ptr, v_s0_ptr,
                                v_s1_ptr, dyn_ptr, lin_ptr, ncols, beta1, omb1, beta2, omb2, V_MODE)
        m_o, v_o = _new_moments(odd, mask_o, m_bytes >> 4, v_bytes >> 4, m_scale, v_blk_scale, g_ptr, v_s0_ptr,
                                v_s1_ptr, dyn_ptr, lin_ptr, ncols, beta1, omb1, beta2, omb2, V_MODE)

        if PHASE == 0:
            _adam_param_update(p_ptr, even, mask_e, m_e, v_e, decay, step_size, bc2_sqrt, eps)
            _adam_param_update(p_ptr, odd, mask_o, m_o, v_o, decay, step_size, bc2_sqrt, eps)
            new_m_scale = tl.maximum(tl.max(tl.abs(m_e), 0), tl.max(tl.abs(m_o), 0))
            lo = _encode(_safe_div(m_e, new_m_scale), dyn_mid_ptr)
            hi = tl.where(mask_o, _encode(_safe_div(m_o, new_m_scale), dyn_mid_ptr), 0)
            tl.store(m_codes_ptr + byte_offs, (lo | (hi << 4)).to(tl.uint8), mask=mask_e)
            tl.store(m_scale_ptr + pid, new_m_scale)
            if V_MODE == 0:
                new_v_scale = tl.maximum(tl.max(v_e, 0), tl.max(v_o, 0))
                lo = _encode(_safe_div(v_e, new_v_scale), lin_mid_ptr)
                hi = tl.where(mask_o, _encode(_safe_div(v_o, new_v_scale), lin_mid_ptr), 0)
                tl.store(v_codes_ptr + byte_offs, (lo | (hi << 4)).to(tl.uint8), mask=mask_e)
                tl.store(v_s0_ptr + pid, new_v_scale)
            if V_MODE == 1:  # new row/column maxima; the codes wait for the second pass
                if ROW_ALIGNED:  # the whole block lies in one row: one atomic for it
                    tl.atomic_max(new_s0_ptr + (pid * BLOCK) // ncols, tl.maximum(tl.max(v_e, 0), tl.max(v_o, 0)))
                else:
                    tl.atomic_max(new_s0_ptr + even // ncols, v_e, mask=mask_e)
                    tl.atomic_max(new_s0_ptr + odd // ncols, v_o, mask=mask_o)
                tl.atomic_max(new_s1_ptr + even % ncols, v_e, mask=mask_e)
                tl.atomic_max(new_s1_ptr + odd % ncols, v_o, mask=mask_o)
        else:  # rank-1 second pass: encode the recomputed new v with the new scales
            s_e = tl.minimum(tl.load(new_s0_ptr + even // ncols, mask=mask_e, other=0.0),
                             tl.load(new_s1_ptr + even % ncols, mask=mask_e, other=0.0))
            s_o = tl.minimum(tl.load(new_s0_ptr + odd // ncols, mask=mask_o, other=0.0),
                             tl.load(new_s1_ptr + odd % ncols, mask=mask_o, other=0.0))
            lo = _encode(_safe_div(v_e, s_e), lin_mid_ptr)
            hi = tl.where(mask_o, _encode(_safe_div(v_o, s_o), lin_mid_ptr), 0)
            tl.store(v_codes_ptr + byte_offs, (lo | (hi << 4)).to(tl.uint8), mask=mask_e)


_TABLES: dict[torch.device, tuple[torch.Tensor, ...]] = {}


def _tables(device: torch.device) -> tuple[torch.Tensor, ...]:
    """Codebooks and their midpoints on `device` (dynamic, dynamic mids, linear, linear mids)."""
    if device not in _TABLES:
        books = (quant4.DYNAMIC_CODES, quant4.LINEAR_CODES)
        _TABLES[device] = tuple(t.to(device) for b in books for t in (b, quant4.midpoints(b)))
    return _TABLES[device]


def step_quantized_triton(p: torch.Tensor, grad: torch.Tensor, state: dict, hp: dict, block: int) -> None:
    """The fused kernel doing what quant4.step_quantized does (same arguments, state updated in place)."""
    if block & (block - 1) or block < 4:
        raise ValueError(f"the Triton 4-bit step needs a power-of-two block size >= 4, got {block}")
    if not p.is_contiguous():
        raise ValueError("the Triton 4-bit step needs a contiguous parameter")
    grad = grad.contiguous()
    numel = p.numel()
    dyn, dyn_mid, lin, lin_mid = _tables(p.device)
    m_codes, m_scale = state["m_codes"], state["m_scale"]
    if "v_row" in state:
        quant4.factored_stats_update(state, grad, hp["beta2"])
        mode, v_codes, s0, s1 = V_FACTORED, m_codes, quant4.factored_row_scale(state), state["v_col"]
        new0, new1 = s0, s1
    elif "v_rowmax" in state:
        mode, v_codes, s0, s1 = V_RANK1, state["v_codes"], state["v_rowmax"], state["v_colmax"]
        new0, new1 = torch.zeros_like(s0), torch.zeros_like(s1)
    else:
        mode, v_codes, s0 = V_BLOCKWISE, state["v_codes"], state["v_scale"]
        s1 = new0 = new1 = s0
    ncols = s1.numel() if mode != V_BLOCKWISE else 1
    args = (p, grad, m_codes, m_scale, v_codes, s0, s1, new0, new1, dyn, dyn_mid, lin, lin_mid, numel, ncols,
            hp["beta1"], 1 - hp["beta1"], hp["beta2"], 1 - hp["beta2"], 1 - hp["lr"] * hp["weight_decay"],
            hp["lr"] / hp["bc1"], hp["bc2_sqrt"], hp["eps"])
    grid = (triton.cdiv(numel, block),)
    aligned = ncols % block == 0
    adamw4bit_kernel[grid](*args, V_MODE=mode, PHASE=0, ROW_ALIGNED=aligned, BLOCK=block)
    if mode == V_RANK1:
        adamw4bit_kernel[grid](*args, V_MODE=mode, PHASE=1, ROW_ALIGNED=aligned, BLOCK=block)
        state["v_rowmax"], state["v_colmax"] = new0, new1
