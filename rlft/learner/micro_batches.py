"""Splitting a mini-batch into micro-batches bounded by rows and by padded tokens, padding as little as it can."""

from __future__ import annotations

import torch


def micro_batch_rows(attention_mask: torch.Tensor, max_rows: int, max_tokens: int | None) -> list[torch.Tensor]:
    """Row indices (ascending) of micro-batches of at most `max_rows` rows and (rows x longest row) <= `max_tokens`
    padded tokens; a single row longer than `max_tokens` is its own micro-batch.

    Activation and logit memory grow with padded tokens, not rows: the token bound keeps the peak the same for
    short and long responses. Within it, rows of similar length go together: responses of a few to hundreds of
    tokens would otherwise pad every pass to its longest row (1.9x the real tokens on the rollout-heavy
    benchmark's batches; ~1.05x this way). The rows are sorted longest first and cut where
    (padded tokens + a pass's fixed cost) over all passes is least, an exact dynamic programme over the cuts;
    a pass is charged max_tokens / 32 tokens (per-pass work that does not scale with tokens: kernel launches,
    Python), so short rows are not split into many tiny passes. The loss weights carry the mini-batch's
    normalisers, so the summed gradient does not depend on which rows share a pass.
    """
    lengths = attention_mask.sum(dim=1)
    order = torch.argsort(lengths, descending=True, stable=True)
    ls = lengths[order].tolist()
    n = len(ls)
    pass_cost = max_tokens // 32 if max_tokens is not None else 1 << 40  # no token bound: fewest passes first
    cost, cut = [0] * (n + 1), [n] * (n + 1)  # cost[i]: least cost of rows i.. (sorted); cut[i]: end of i's pass
    for i in range(n - 1, -1, -1):
        best = None
        for j in range(i + 1, n + 1):  # the pass holds sorted rows i..j-1, padded to ls[i] (the longest)
            rows = j - i
            if rows > 1 and (rows > max_rows or (max_tokens is not None and rows * ls[i] > max_tokens)):
                break
            c = rows * ls[i] + pass_cost + cost[j]
            if best is None or c < best:
                best, cut[i] = c, j
        cost[i] = best
    passes, i = [], 0
    while i < n:
        passes.append(order[i : cut[i]].sort().values)
        i = cut[i]
    return passes
