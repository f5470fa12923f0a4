"""What an aggregation mode does to long wrong answers: statistics of one batch's weights (docs/methods.md#aggregation).

Every mode's loss is sum_{i,t} w_i * l_{i,t} with l already multiplied by A_i, so response i pushes
on the policy with total weight |A_i| * w_i * |o_i| spread evenly over its |o_i| tokens. The
statistics below read that mass for the responses the Balanced Aggregation paper is about: wrong
answers (A_i < 0) longer than their group's mean length.
"""

from __future__ import annotations

import torch


def weight_statistics(
    weights: torch.Tensor, advantages: torch.Tensor, lengths: torch.Tensor, correct: torch.Tensor
) -> dict[str, float]:
    """Length and gradient-weight statistics of one batch; weights, advantages [B*G], lengths, correct [B, G].

    response/length_right, response/length_wrong: mean length (tokens) of correct and wrong responses.
    weights/length_sign_corr: Pearson correlation, over responses with A != 0, of sign(A) with the
      length minus its group's mean (negative: the longer answers of a group are the wrong ones).
    weights/negative_share: share of the total |A| w |o| mass on responses with A < 0.
    weights/long_wrong_share: share of that mass on long wrong responses (A < 0, longer than the group mean).
    weights/long_wrong_token_weight: their per-token weight |A| w over the mean per-token weight of all
      responses with A != 0 (1: a token of a long wrong answer weighs as much as an average token).
    """
    b, g = lengths.shape
    lengths = lengths.to(torch.float32)
    w, a = weights.view(b, g).to(torch.float32), advantages.view(b, g).to(torch.float32)
    correct = correct.to(torch.bool)
    stats: dict[str, float] = {}
    if correct.any():
        stats["response/length_right"] = float(lengths[correct].mean())
    if (~correct).any():
        stats["response/length_wrong"] = float(lengths[~correct].mean())
    active = a != 0
    mass = a.abs() * w * lengths
    total = mass[active].sum()
    if not active.any() or total <= 0:
        return stats  # no group with unequal rewards: nothing is pushed
    centred = (lengths - lengths.mean(dim=1, keepdim=True))[active]
    sign = a.sign()[active]
    if centred.std() > 0 and sign.std() > 0:
        stats["weights/length_sign_corr"] = float(torch.corrcoef(torch.stack([centred, sign]))[0, 1])
    long_wrong = active & (a < 0) & (lengths > lengths.mean(dim=1, keepdim=True))
    stats["weights/negative_share"] = float(mass[active & (a < 0)].sum() / total)
    stats["weights/long_wrong_share"] = float(mass[long_wrong].sum() / total)
    if long_wrong.any():
        per_token_all = total / lengths[active].sum()
        stats["weights/long_wrong_token_weight"] = float(mass[long_wrong].sum() / lengths[long_wrong].sum() / per_token_all)
    return stats
