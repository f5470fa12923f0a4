"""Micro-batches bounded by rows and by padded tokens; learner.logprobs=auto."""

from __future__ import annotations

import torch

from rlft.learner.logprobs import use_fused_logprobs
from rlft.learner.micro_batches import micro_batch_slices


def _mask(lengths: list[int]) -> torch.Tensor:
    width = max(lengths)
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def test_micro_batches_keep_rows_times_longest_row_within_the_token_bound():
    lengths = [10, 30, 20, 50, 5, 5, 5, 5]
    slices = micro_batch_slices(_mask(lengths), max_rows=64, max_tokens=60)
    assert [(s.start, s.stop) for s in slices] == [(0, 2), (2, 3), (3, 4), (4, 8)]
    covered = [i for s in slices for i in range(s.start, s.stop)]
    assert covered == list(range(len(lengths)))


def test_a_row_longer_than_the_bound_is_its_own_micro_batch_and_rows_still_bound():
    assert [(s.start, s.stop) for s in micro_batch_slices(_mask([100, 3, 3]), 64, 50)] == [(0, 1), (1, 3)]
    assert [(s.start, s.stop) for s in micro_batch_slices(_mask([3] * 5), 2, None)] == [(0, 2), (2, 4), (4, 5)]


def test_auto_logprobs_are_fused_for_a_large_vocabulary_only():
    from types import SimpleNamespace as C

    smollm2 = C(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    tiny = C(vocab_size=128, hidden_size=128, intermediate_size=512, num_hidden_layers=2)
    assert use_fused_logprobs("auto", smollm2) and not use_fused_logprobs("auto", tiny)
    assert use_fused_logprobs("fused", tiny) and not use_fused_logprobs("plain", smollm2)
