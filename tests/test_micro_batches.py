"""Micro-batches bounded by rows and by padded tokens; learner.logprobs=auto."""

from __future__ import annotations

import torch

from rlft.learner.logprobs import use_fused_logprobs
from rlft.learner.micro_batches import micro_batch_rows
from rlft.learner.packing import pack_units, unit_lengths


def _mask(lengths: list[int]) -> torch.Tensor:
    width = max(lengths)
    return torch.tensor([[1] * n + [0] * (width - n) for n in lengths])


def _passes(lengths, max_rows, max_tokens):
    return [m.tolist() for m in micro_batch_rows(_mask(lengths), max_rows, max_tokens)]


def _padded(lengths, passes):
    return sum(len(p) * max(lengths[i] for i in p) for p in passes)


def test_micro_batches_cover_every_row_once_within_the_row_and_token_bounds():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 300, (64,), generator=gen).tolist()
    passes = _passes(lengths, max_rows=8, max_tokens=1024)
    assert sorted(i for p in passes for i in p) == list(range(64))
    for p in passes:
        assert p == sorted(p) and len(p) <= 8
        assert len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 1024


def test_rows_of_similar_length_share_a_pass_so_little_is_padded():
    # long and short responses interleaved, as a group's samples come: contiguous passes pad the short ones
    lengths = [256, 5, 252, 6, 250, 7, 248, 8]
    passes = _passes(lengths, max_rows=64, max_tokens=1024)
    assert sorted(map(sorted, passes)) == [[0, 2, 4, 6], [1, 3, 5, 7]]
    assert _padded(lengths, passes) == 4 * 256 + 4 * 8


def test_short_rows_are_not_split_into_many_tiny_passes():
    # a pass costs max_tokens / 32 = 64 tokens' worth: splitting the 12s from the 14s saves 40 padded tokens
    lengths = [14, 12] * 20
    assert len(_passes(lengths, max_rows=256, max_tokens=2048)) == 1


def test_a_row_longer_than_the_bound_is_its_own_micro_batch_and_rows_still_bound():
    assert _passes([100, 3, 3], 64, 50) == [[0], [1, 2]]
    # no token bound (the DeepSpeed learner, whose ranks must run as many passes as each other): fewest passes
    assert len(_passes([3, 9, 1, 4, 7], 2, None)) == 3


def test_packed_rows_are_cut_by_their_own_tokens_and_keep_their_rows_together():
    # the embedded default's batch: 32 prompts of 9 tokens x 8 samples with responses of 1..6 tokens; as whole
    # rows (256 x 15 padded tokens) it needs three passes under 2048; packed (a group's prompt once, then its
    # responses: 32 rows of ~37 tokens) it all fits one, and the cuts weigh padding against a pass's cost
    gen = torch.Generator().manual_seed(0)
    responses = torch.randint(1, 7, (256,), generator=gen)
    lengths = (9 + responses).tolist()
    first, group = [9] * 256, [i // 8 for i in range(256)]
    units = pack_units(first, lengths, group, cap=128)
    tokens = unit_lengths(units, first, lengths)
    assert len(units) == 32 and all(len(u) == 8 for u in units)
    whole_rows = _passes(lengths, max_rows=256, max_tokens=2048)
    passes = micro_batch_rows(_mask(lengths), 256, 2048, units, tokens)
    assert len(passes) < len(whole_rows) == 3
    # a tighter bound cuts between packed rows, never through one, and counts rows x the longest packed row
    for bound in (2048, 512):
        passes = micro_batch_rows(_mask(lengths), 256, bound, units, tokens)
        assert sorted(i for p in passes for i in p.tolist()) == list(range(256))
        for p in passes:
            inside = [u for u in range(32) if set(units[u]) <= set(p.tolist())]
            assert sum(len(units[u]) for u in inside) == len(p)
            assert len(inside) * max(tokens[u] for u in inside) <= bound


def test_auto_logprobs_are_fused_for_a_large_vocabulary_only():
    from types import SimpleNamespace as C

    smollm2 = C(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30)
    tiny = C(vocab_size=128, hidden_size=128, intermediate_size=512, num_hidden_layers=2)
    assert use_fused_logprobs("auto", smollm2) and not use_fused_logprobs("auto", tiny)
    assert use_fused_logprobs("fused", tiny) and not use_fused_logprobs("plain", smollm2)
