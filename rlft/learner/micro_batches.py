"""Splitting a mini-batch into micro-batches bounded by rows and by padded tokens."""

from __future__ import annotations

import torch


def micro_batch_slices(attention_mask: torch.Tensor, max_rows: int, max_tokens: int | None) -> list[slice]:
    """Consecutive row slices of at most `max_rows` rows and (rows x longest row) <= `max_tokens` tokens.

    Activation and logit memory grow with padded tokens, not rows: a token bound keeps the peak
    the same for short and long responses. A single row longer than `max_tokens` is its own slice.
    """
    lengths = attention_mask.sum(dim=1).tolist()
    slices, start, width = [], 0, 0
    for i, length in enumerate(lengths):
        grown = max(width, int(length))
        rows = i - start + 1
        if i > start and (rows > max_rows or (max_tokens is not None and rows * grown > max_tokens)):
            slices.append(slice(start, i))
            start, grown = i, int(length)
        width = grown
    if lengths:
        slices.append(slice(start, len(lengths)))
    return slices
