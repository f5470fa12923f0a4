"""Aggregation of per-token losses (docs/methods.md#aggregation), as per-token weights fixed when the batch is built.

Every mode here is `loss = sum_{i,t} w_i * l_{i,t}` with one weight per response, computed from
the whole batch (all micro-batches, all data-parallel ranks). Because the normalisers are global,
summing the loss of any split of the batch gives exactly the full batch's loss and gradient.
"""

from __future__ import annotations

import torch

from rlft.registry import Registry

AGGREGATIONS: Registry = Registry("aggregation mode")


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(advantages: torch.Tensor, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(1/BG) sum_i (1/|o_i|) sum_t l: every response weighs the same, its tokens share it."""
    b, g = lengths.shape
    return 1.0 / (b * g * lengths.clamp(min=1))


@AGGREGATIONS.register("token-mean")
def token_mean(advantages: torch.Tensor, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """sum_{i,t} l / sum_i |o_i|: every token weighs the same (DAPO)."""
    return torch.full_like(lengths, 1.0, dtype=torch.float32) / lengths.sum().clamp(min=1)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(advantages: torch.Tensor, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """sum_{i,t} l / (BG * L_max), L_max the generation budget (Dr. GRPO)."""
    b, g = lengths.shape
    return torch.full_like(lengths, 1.0 / (b * g * max_len), dtype=torch.float32)


@AGGREGATIONS.register("balanced")
def balanced(advantages: torch.Tensor, lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Balanced Aggregation: w_i = |S(i)| / (G * B * T_S(i)) with S(i) the sign side of A_i in its group.

    Each side keeps the weight |S|/G it has under sequence aggregation (no sign-length coupling)
    and spreads it evenly over the side's tokens T_S; responses with A_i = 0 get weight 0.
    """
    b, g = lengths.shape
    lengths = lengths.to(torch.float32)
    weights = torch.zeros_like(lengths)
    for side in (advantages > 0, advantages < 0):
        count = side.sum(dim=1, keepdim=True).to(torch.float32)  # |S| per group
        tokens = (lengths * side).sum(dim=1, keepdim=True)  # T_S per group
        side_weight = count / (g * b * tokens.clamp(min=1))
        weights = torch.where(side, side_weight.expand_as(weights), weights)
    return weights
