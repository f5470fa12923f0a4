"""Counter-based sampling: draws follow the distribution, top-p keeps to the nucleus, streams are independent."""

from __future__ import annotations

import torch

from rlft.rollout.sampling import sample_key, sample_tokens, uniforms


def _draws(logits: torch.Tensor, n: int, top_p: float = 1.0) -> torch.Tensor:
    keys = torch.tensor([sample_key(3, 0, j) for j in range(n)], dtype=torch.int64)
    u = uniforms(keys, torch.zeros(n, dtype=torch.int64))
    tokens, _ = sample_tokens(logits.expand(n, -1), 1.0, top_p, u)
    return tokens


def test_draws_follow_the_temperature_scaled_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5, 3.0]])
    n = 60_000
    freq = torch.bincount(_draws(logits, n), minlength=6).double() / n
    assert torch.allclose(freq, torch.softmax(logits[0].double(), -1), atol=0.01)


def test_top_p_never_draws_outside_the_nucleus_and_reports_untruncated_logprobs():
    logits = torch.tensor([[3.0, 2.5, 0.0, -1.0, -2.0]])
    tokens = _draws(logits, 5_000, top_p=0.8)
    assert set(tokens.tolist()) <= {0, 1}  # p = 0.56, 0.34: the smallest prefix reaching 0.8
    u = torch.tensor([0.99], dtype=torch.float64)
    token, logprob = sample_tokens(logits, 0.5, 0.8, u)
    assert torch.allclose(logprob, torch.log_softmax(logits / 0.5, -1)[0, token])


def test_sample_streams_are_distinct_across_seeds_prompts_samples_and_steps():
    keys = {sample_key(seed, i, j) for seed in range(3) for i in range(50) for j in range(32)}
    assert len(keys) == 3 * 50 * 32
    k = torch.tensor([sample_key(0, 0, j) for j in range(64)], dtype=torch.int64)
    steps = torch.arange(64)
    across_samples = uniforms(k, torch.zeros(64, dtype=torch.int64))  # token 0 of samples 0..63
    across_steps = uniforms(k[:1].expand(64), steps)  # tokens 0..63 of sample 0
    assert len(set(across_samples.tolist()) & set(across_steps.tolist())) == 1  # only (sample 0, token 0)


def test_greedy_ignores_the_random_numbers():
    logits = torch.tensor([[0.1, 0.7, 0.2]])
    token, logprob = sample_tokens(logits, 0.0, 1.0, None)
    assert token.item() == 1 and torch.allclose(logprob, torch.log_softmax(logits, -1)[0, 1])
