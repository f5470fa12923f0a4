"""Token log-probs (and entropy) straight from hidden states and the LM head, in vocabulary chunks.

The plain path builds logits [N, V] in fp32, then log-softmax, then (backward) a gradient of the
same size: several N·V·4 bytes at once, which at V >= 32k dominates the learner's peak. Here the
vocabulary is walked in chunks with an online logsumexp (running max m, running sum s of
exp(z - m), and for the entropy running sum t of exp(z - m)·z), so only [N, chunk] exists at a
time. Backward recomputes each chunk's logits and turns them into the logit gradient

    dL/dz = g_lp·(onehot(target) − p) − g_ent·p·(z − E_p[z]),   p = exp(z − lse)

then into dL/dhidden and dL/dweight with two matmuls. On CUDA with Triton the forward is one
kernel (matmul tiles, online logsumexp, target pick and entropy in registers: no chunk of logits
ever reaches memory) and the backward's elementwise step is a kernel; elsewhere torch runs.
Logits are divided by the temperature as the sampling engine does; 0 and 1 mean no scaling.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # the torch path runs
    HAS_TRITON = False


def fused_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = 8192,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log softmax(hidden·weightᵀ / T)[target] as [N] fp32, and the entropy [N] fp32 when asked (else None).

    (fp64 outputs for fp64 inputs, on the torch path.)

    hidden [N, H] and weight [V, H] (the LM head, same dtype) carry gradients; targets [N] int64
    in [0, V) (other values give finite garbage, for masked-out positions). `chunk_size` is the
    vocabulary chunk of the torch path and of the Triton backward, counted in tokens.
    """
    scale = 1.0 if temperature in (0.0, 1.0) else float(temperature)
    if HAS_TRITON and hidden.is_cuda:
        fn = TritonLogprob.apply
    else:
        fn = ChunkedLogprob.apply
    logprobs, entropy = fn(hidden, weight, targets, scale, chunk_size, with_entropy)
    return logprobs, (entropy if with_entropy else None)


def _acc_dtype(hidden: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (gradient checks)."""
    return torch.promote_types(hidden.dtype, torch.float32)


def _chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, start: int, end: int, scale: float) -> torch.Tensor:
    """z = hidden·weight[start:end]ᵀ / T as [N, end - start] fp32 (matmul in the inputs' dtype, as the plain path)."""
    z = (hidden @ weight[start:end].T).to(_acc_dtype(hidden))
    return z.div_(scale) if scale != 1.0 else z


def logit_grad_torch(z, targets, start, lse, mean_z, g_lp, g_ent, scale):
    """dL/d(raw logits) of one chunk [N, c] from its scaled logits z, written over z (torch reference of the kernel)."""
    p = (z - lse[:, None]).exp_()
    if g_ent is not None:  # -g_ent·p·(z − E[z]) − g_lp·p, in z's storage: two [N, c] buffers in all
        grad = z.sub_(mean_z[:, None]).mul_(p).mul_(-g_ent[:, None]).sub_(p.mul_(g_lp[:, None]))
    else:
        grad = z.copy_(p).mul_(-g_lp[:, None])
    del p
    cols = targets - start
    rows = ((cols >= 0) & (cols < z.shape[1])).nonzero().squeeze(1)
    grad[rows, cols[rows]] += g_lp[rows]
    return grad.div_(scale) if scale != 1.0 else grad


def _backward_chunks(ctx, g_lp, g_ent, grad_fn):
    """dL/dhidden and dL/dweight, one vocabulary chunk at a time (shared by the torch and Triton paths)."""
    hidden, weight, targets, lse, mean_z = ctx.saved_tensors
    g_lp = torch.zeros_like(lse) if g_lp is None else g_lp.to(lse.dtype).contiguous()
    g_ent = g_ent.to(lse.dtype).contiguous() if (ctx.with_entropy and g_ent is not None) else None
    d_hidden = torch.zeros(hidden.shape, dtype=lse.dtype, device=hidden.device)
    d_weight = torch.empty_like(weight)
    for start in range(0, weight.shape[0], ctx.chunk_size):
        end = min(start + ctx.chunk_size, weight.shape[0])
        z = _chunk_logits(hidden, weight, start, end, ctx.scale)
        grad = grad_fn(z, targets, start, lse, mean_z, g_lp, g_ent, ctx.scale).to(hidden.dtype)
        d_hidden += grad @ weight[start:end]  # matmul in the inputs' dtype, sum in fp32
        torch.mm(grad.T, hidden, out=d_weight[start:end])
        del z, grad
    return d_hidden.to(hidden.dtype), d_weight, None, None, None, None


class ChunkedLogprob(torch.autograd.Function):
    """The torch path: online logsumexp over vocabulary chunks; backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk_size, with_entropy):
        n = hidden.shape[0]
        f32 = dict(dtype=_acc_dtype(hidden), device=hidden.device)
        run_max = torch.full((n,), float("-inf"), **f32)
        run_sum, run_zsum, target_z = torch.zeros(n, **f32), torch.zeros(n, **f32), torch.zeros(n, **f32)
        for start in range(0, weight.shape[0], chunk_size):
            end = min(start + chunk_size, weight.shape[0])
            z = _chunk_logits(hidden, weight, start, end, scale)
            new_max = torch.maximum(run_max, z.amax(dim=1))
            alpha = torch.exp(run_max - new_max)
            e = (z - new_max[:, None]).exp_()
            run_sum = run_sum * alpha + e.sum(dim=1)
            if with_entropy:  # row-wise dot products: no third [N, c] buffer
                run_zsum = run_zsum * alpha + torch.bmm(e[:, None, :], z[:, :, None]).view(-1)
            run_max = new_max
            cols = targets - start
            hit = (cols >= 0) & (cols < end - start)
            picked = z.gather(1, cols.clamp(0, end - start - 1)[:, None]).squeeze(1)
            target_z = torch.where(hit, picked, target_z)
            del z, e
        lse = run_max + torch.log(run_sum)
        mean_z = run_zsum / run_sum
        ctx.save_for_backward(hidden, weight, targets, lse, mean_z)
        ctx.scale, ctx.chunk_size, ctx.with_entropy = scale, chunk_size, with_entropy
        entropy = lse - mean_z if with_entropy else torch.zeros_like(lse)
        return target_z - lse, entropy

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        return _backward_chunks(ctx, g_lp, g_ent, logit_grad_torch)


if HAS_TRITON:

    @triton.jit
    def logprob_fwd_kernel(
        h_ptr, w_ptr, tgt_ptr, max_ptr, sum_ptr, zsum_ptr, tz_ptr, N, V, H, stride_h, stride_w, scale, V_PER_SPLIT,
        WITH_ENTROPY: tl.constexpr, PRECISION: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_H: tl.constexpr,
    ):
        """Partial online-logsumexp statistics of rows block program_id(0) over vocabulary split program_id(1)."""
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_mask = rows < N
        split = tl.program_id(1)
        v_begin = split * V_PER_SPLIT
        v_end = tl.minimum(v_begin + V_PER_SPLIT, V)
        tgt = tl.load(tgt_ptr + rows, mask=row_mask, other=-1)
        run_max = tl.full([BLOCK_N], float("-inf"), tl.float32)
        run_sum = tl.zeros([BLOCK_N], tl.float32)
        run_zsum = tl.zeros([BLOCK_N], tl.float32)
        target_z = tl.zeros([BLOCK_N], tl.float32)
        for v0 in range(v_begin, v_end, BLOCK_V):
            cols = v0 + tl.arange(0, BLOCK_V)
            col_mask = cols < v_end
            acc = tl.zeros([BLOCK_N, BLOCK_V], tl.float32)
            for h0 in range(0, H, BLOCK_H):
                hk = h0 + tl.arange(0, BLOCK_H)
                h_mask = hk < H
                a = tl.load(h_ptr + rows[:, None] * stride_h + hk[None, :],
                            mask=row_mask[:, None] & h_mask[None, :], other=0.0)
                b = tl.load(w_ptr + cols[:, None] * stride_w + hk[None, :],
                            mask=col_mask[:, None] & h_mask[None, :], other=0.0)
                acc = tl.dot(a, tl.trans(b), acc, input_precision=PRECISION)
            z = tl.where(col_mask[None, :], acc / scale, float("-inf"))
            new_max = tl.maximum(run_max, tl.max(z, 1))
            e = tl.exp(z - new_max[:, None])
            alpha = tl.exp(run_max - new_max)
            run_sum = run_sum * alpha + tl.sum(e, 1)
            if WITH_ENTROPY:
                run_zsum = run_zsum * alpha + tl.sum(e * tl.where(col_mask[None, :], z, 0.0), 1)
            run_max = new_max
            target_z += tl.sum(tl.where(cols[None, :] == tgt[:, None], z, 0.0), 1)
        out = split * N + rows
        tl.store(max_ptr + out, run_max, mask=row_mask)
        tl.store(sum_ptr + out, run_sum, mask=row_mask)
        tl.store(zsum_ptr + out, run_zsum, mask=row_mask)
        tl.store(tz_ptr + out, target_z, mask=row_mask)

    @triton.jit
    def logit_grad_kernel(
        z_ptr, out_ptr, tgt_ptr, lse_ptr, mz_ptr, glp_ptr, gent_ptr, N, C, start, scale,
        WITH_ENTROPY: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (rows < N)[:, None] & (cols < C)[None, :]
        offs = rows[:, None] * C + cols[None, :]
        z = tl.load(z_ptr + offs, mask=mask, other=0.0)
        lse = tl.load(lse_ptr + rows, mask=rows < N, other=0.0)
        g_lp = tl.load(glp_ptr + rows, mask=rows < N, other=0.0)
        p = tl.exp(z - lse[:, None])
        grad = p * (-g_lp[:, None])
        if WITH_ENTROPY:
            g_ent = tl.load(gent_ptr + rows, mask=rows < N, other=0.0)
            mean_z = tl.load(mz_ptr + rows, mask=rows < N, other=0.0)
            grad -= g_ent[:, None] * p * (z - mean_z[:, None])
        tgt = tl.load(tgt_ptr + rows, mask=rows < N, other=-1) - start
        grad += tl.where(cols[None, :] == tgt[:, None], g_lp[:, None], 0.0)
        tl.store(out_ptr + offs, grad / scale, mask=mask)


def logit_grad_triton(z, targets, start, lse, mean_z, g_lp, g_ent, scale):
    """The Triton kernel doing what logit_grad_torch does on a contiguous [N, c] fp32 chunk (also in place)."""
    n, c = z.shape
    grid = (triton.cdiv(n, 32), triton.cdiv(c, 64))
    logit_grad_kernel[grid](z, z, targets, lse, mean_z, g_lp, g_lp if g_ent is None else g_ent, n, c, start,
                            scale, WITH_ENTROPY=g_ent is not None, BLOCK_N=32, BLOCK_C=64)
    return z


class TritonLogprob(torch.autograd.Function):
    """The Triton path: fused forward kernel; backward chunked with the elementwise kernel.

    The forward grid is (row blocks, vocabulary splits): each program keeps running max, sum
    and entropy sum over its split; the splits' [S, N] partials are merged here. Splits give
    the GPU enough programs when N is small and bound how often each program rereads W.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, chunk_size, with_entropy, blocks=(64, 64, 64), splits=None):
        hidden, weight, targets = hidden.contiguous(), weight.contiguous(), targets.contiguous()
        (n, h), v = hidden.shape, weight.shape[0]
        block_n, block_v, block_h = blocks
        row_blocks = triton.cdiv(n, block_n)
        if splits is None:  # about 4 programs per SM
            sms = torch.cuda.get_device_properties(hidden.device).multi_processor_count if hidden.is_cuda else 1
            splits = max(1, min(triton.cdiv(4 * sms, row_blocks), triton.cdiv(v, block_v)))
        v_per_split = triton.cdiv(triton.cdiv(v, splits), block_v) * block_v
        splits = triton.cdiv(v, v_per_split)
        partials = [torch.empty(splits, n, dtype=torch.float32, device=hidden.device) for _ in range(4)]
        run_max, run_sum, run_zsum, target_z = partials
        logprob_fwd_kernel[(row_blocks, splits)](
            hidden, weight, targets, run_max, run_sum, run_zsum, target_z, n, v, h, hidden.stride(0), weight.stride(0),
            scale, v_per_split, WITH_ENTROPY=with_entropy, PRECISION="ieee" if hidden.dtype == torch.float32 else None,
            BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h,
        )
        top = run_max.amax(dim=0)
        weights = torch.exp(run_max - top)  # merge the splits' online statistics
        total = (run_sum * weights).sum(dim=0)
        lse = top + torch.log(total)
        mean_z = (run_zsum * weights).sum(dim=0) / total
        ctx.save_for_backward(hidden, weight, targets, lse, mean_z)
        ctx.scale, ctx.chunk_size, ctx.with_entropy = scale, chunk_size, with_entropy
        entropy = lse - mean_z if with_entropy else torch.zeros_like(lse)
        return target_z.sum(dim=0) - lse, entropy

    @staticmethod
    def backward(ctx, g_lp, g_ent):
        return (*_backward_chunks(ctx, g_lp, g_ent, logit_grad_triton), None, None)
