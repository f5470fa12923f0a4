"""Token sampling shared by the engines: temperature, top-p, the drawn token's log-prob, and the
counter-based randomness that makes every sample reproducible however the engine batches it.

Sample j of prompt i draws its t-th token from one uniform number u(seed, i, j, t) by inverse-CDF
sampling. Nothing depends on which other sequences share the decode step, so full-group, micro-group
and Infinite-Sampling scheduling (and any number of slots) give the same completions for a seed.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mul32(x, c: int):
    """(x * c) mod 2**32 for 32-bit x (ints or int64 tensors) without int64 overflow."""
    hi, lo = c >> 16, c & 0xFFFF
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def mix32(x):
    """murmur3's finalizer: a bijective 32-bit mix of Python ints or int64 tensors holding 32-bit values."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x85EBCA6B)
    x = x ^ (x >> 13)
    x = _mul32(x, 0xC2B2AE35)
    return x ^ (x >> 16)


def sample_key(seed: int, prompt_index: int, sample_index: int) -> int:
    """The 32-bit key of sample `sample_index` of prompt `prompt_index` under `seed` (also vLLM's per-request seed)."""
    key = mix32((seed ^ (seed >> 32) ^ 0x5EED5EED) & _MASK32)  # the offset keeps seed 0 away from mix32(0) = 0
    key = mix32((key + _mul32(prompt_index + 1, _GOLDEN)) & _MASK32)
    return mix32((key ^ _mul32(sample_index + 1, 0x85EBCA77)) & _MASK32)


def uniforms(keys: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """u(key, t) in (0, 1) as float64 [rows] for int64 `keys` and token positions `steps` [rows].

    Each sample walks its own Weyl sequence (mixed key + t * odd constant) through the mixer, so keys and
    steps never play symmetric roles (sample j's token t and sample t's token j draw different numbers)."""
    # the same arithmetic in numpy uint64, where a product of two 32-bit values is exact: a handful of
    # vectorised ops per decode step instead of some forty small tensor ops
    k = keys.cpu().numpy().astype(np.uint64)
    t = steps.cpu().numpy().astype(np.uint64)
    bits = _mix32_np((_mix32_np(k ^ np.uint64(0xA511E9B3)) + (t + np.uint64(1)) * np.uint64(0xC2B2AE3D)) & _M64)
    return (torch.from_numpy(bits.astype(np.float64)) + 0.5) / 2.0**32


_M64 = np.uint64(_MASK32)


def _mix32_np(x: np.ndarray) -> np.ndarray:
    """mix32 on uint64 arrays holding 32-bit values."""
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & _M64
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & _M64
    return x ^ (x >> np.uint64(16))


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of `logits` [rows, vocab] with uniforms `u` [rows] (None when greedy).

    Returns (tokens [rows] long, logprobs [rows] float32). The log-prob is that of the
    temperature-scaled distribution before top-p truncation, which is what the learner recomputes
    from the same weights (so importance ratios start at 1). With temperature 0 the draw is greedy
    and the log-prob is that of the unscaled distribution.
    """
    logits = logits.float()
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    probs = logprobs.exp()
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        probs = probs.masked_fill((probs.cumsum(dim=-1) - probs) >= top_p, 0.0)
    cdf = probs.double().cumsum(dim=-1)
    target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
    # the first index whose cdf reaches the target always has positive probability (target > 0)
    picked = torch.searchsorted(cdf, target).clamp_(max=cdf.shape[-1] - 1)
    tokens = (order.gather(-1, picked) if order is not None else picked).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
