"""Rewards: the registry, user-function loading, built-in verifiers and the scorer."""

from rlft.reward.registry import REWARDS, load_reward_fn, register_reward

__all__ = ["REWARDS", "load_reward_fn", "register_reward"]
