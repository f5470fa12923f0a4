"""Scoring completions with the configured weighted reward functions (runs inside reward actors)."""

from __future__ import annotations

import math

from rlft.reward.registry import load_reward_fn


class RewardScorer:
    """Weighted sum of reward functions; a failing function gives the configured failure reward."""

    def __init__(self, reward_cfg):
        self.cfg = reward_cfg
        self.functions = [(spec.name, load_reward_fn(spec.name), spec.weight) for spec in reward_cfg.functions]

    def score(self, prompts: list[str], completions: list[str], rows: list[dict]) -> tuple[list[float], dict]:
        """Rewards (one per completion) and step metrics (per-function means, failure count)."""
        rewards, failures = [], 0
        sums = {name: 0.0 for name, _, _ in self.functions}
        for prompt, completion, row in zip(prompts, completions, rows):
            total = 0.0
            for name, fn, weight in self.functions:
                fields = {k: v for k, v in row.items() if k != "prompt"}
                try:
                    value = _as_reward(fn(prompt, completion, **fields))
                except Exception:
                    value, failures = self.cfg.failure_reward, failures + 1
                sums[name] += value
                total += weight * value
            rewards.append(total)
        n = max(len(rewards), 1)
        metrics = {f"reward/{name}": s / n for name, s in sums.items()}
        metrics["reward/failures"] = failures
        return rewards, metrics


def _as_reward(value) -> float:
    if isinstance(value, dict):
        value = value["reward"] if "reward" in value else sum(value.values())
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"reward is not finite: {value}")
    return value
