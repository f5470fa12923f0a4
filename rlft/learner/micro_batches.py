"""Splitting a mini-batch into micro-batches bounded by rows and by padded tokens, padding as little as it can."""

from __future__ import annotations

import torch


def micro_batch_rows(
    attention_mask: torch.Tensor, max_rows: int, max_tokens: int | None,
    units: list[list[int]] | None = None, unit_tokens: list[int] | None = None,
) -> list[torch.Tensor]:
    """Row indices (ascending) of micro-batches of at most `max_rows` rows and `max_tokens` padded tokens
    (sequences x the longest); a single sequence longer than `max_tokens` is its own micro-batch.

    Activation and logit memory grow with padded tokens, not rows: the token bound keeps the peak the same for
    short and long responses. Within it, sequences of similar length go together: responses of a few to hundreds
    of tokens would otherwise pad every pass to its longest row (1.9x the real tokens on the rollout-heavy
    benchmark's batches; ~1.05x this way). The sequences are sorted longest first and cut where
    (padded tokens + a pass's fixed cost) over all passes is least, an exact dynamic programme over the cuts;
    a pass is charged max_tokens / 32 tokens (per-pass work that does not scale with tokens: kernel launches,
    Python), so short sequences are not split into many tiny passes. The loss weights carry the mini-batch's
    normalisers, so the summed gradient does not depend on which rows share a pass.

    A sequence is a row, or with `units` a packed row holding the rows listed (rlft.learner.packing), of
    `unit_tokens` tokens; `max_rows` still counts the rows.
    """
    if units is None:
        units, unit_tokens = [[i] for i in range(attention_mask.shape[0])], attention_mask.sum(dim=1).tolist()
    order = sorted(range(len(units)), key=lambda u: -unit_tokens[u])
    ls = [unit_tokens[u] for u in order]
    counts = [len(units[u]) for u in order]
    n = len(ls)
    pass_cost = max_tokens // 32 if max_tokens is not None else 1 << 40  # no token bound: fewest passes first
    cost, cut = [0] * (n + 1), [n] * (n + 1)  # cost[i]: least cost of sequences i.. (sorted); cut[i]: end of i's pass
    for i in range(n - 1, -1, -1):
        best, rows = None, 0
        for j in range(i + 1, n + 1):  # the pass holds sorted sequences i..j-1, padded to ls[i] (the longest)
            rows += counts[j - 1]
            tokens = (j - i) * ls[i]
            if j - i > 1 and (rows > max_rows or (max_tokens is not None and tokens > max_tokens)):
                break
            c = tokens + pass_cost + cost[j]
            if best is None or c < best:
                best, cut[i] = c, j
        cost[i] = best
    passes, i = [], 0
    while i < n:
        passes.append(torch.tensor(sorted(r for u in order[i : cut[i]] for r in units[u]), dtype=torch.long,
                                   device=attention_mask.device))
        i = cut[i]
    return passes
