"""Rewards: the plug-in API (registry, loading, @batched), the scorer and its worker processes,
the math verifier and the code sandbox."""

from rlft.reward.registry import REWARDS, batched, load_reward, load_reward_fn, register_reward
from rlft.reward.scorer import RewardFailureError, RewardScorer, check_failure_rate

__all__ = [
    "REWARDS", "RewardFailureError", "RewardScorer", "batched", "check_failure_rate", "load_reward",
    "load_reward_fn", "register_reward",
]
