"""Benchmark metrics over n samples per problem: pass@k (unbiased) and maj@k (majority vote)."""

from __future__ import annotations

from collections import Counter

from rlft.reward.math_verifier import normalize_answer


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct of `n` samples: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    missing = 1.0  # C(n-c, k) / C(n, k) as a product, which never forms the large binomials
    for i in range(n - c + 1, n + 1):
        missing *= 1.0 - k / i
    return 1.0 - missing


def maj_at_k(answers: list[str | None], correct: list[bool], k: int) -> float:
    """1.0 when the most common answer among the first `k` samples is correct (ties: the earliest)."""
    votes = Counter()
    first_seen: dict[str, int] = {}
    for i, answer in enumerate(answers[:k]):
        if answer is None:
            continue  # a sample without an answer does not vote
        key = normalize_answer(answer)
        votes[key] += 1
        first_seen.setdefault(key, i)
    if not votes:
        return 0.0
    winner = max(votes, key=lambda key: (votes[key], -first_seen[key]))
    return float(correct[first_seen[winner]])


def summarize(correct: list[list[bool]], ks: list[int], answers: list[list[str | None]] | None = None) -> dict:
    """Mean pass@k (and maj@k when answers are given) over problems, for each k <= samples per problem."""
    n = min(len(c) for c in correct)
    metrics = {}
    for k in sorted(set(ks)):
        if k > n:
            continue
        metrics[f"pass@{k}"] = sum(pass_at_k(len(c), sum(c), k) for c in correct) / len(correct)
        if answers is not None:
            metrics[f"maj@{k}"] = sum(maj_at_k(a, c, k) for a, c in zip(answers, correct)) / len(correct)
    return metrics
