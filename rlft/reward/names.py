"""The reward registry and its decorators: the leaf module that reward plug-ins import.

The loader (rlft.reward.registry) imports the built-in plug-ins, and they import this module, so
registration never forms an import circle.
"""

from __future__ import annotations

from typing import Any, Callable

from rlft.registry import Registry

RewardFn = Callable[..., Any]
REWARDS: Registry[RewardFn] = Registry("reward")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available as `--reward name`."""
    return REWARDS.register(name)


def batched(fn: RewardFn) -> RewardFn:
    """Decorator: `fn(prompts, completions, **fields)` takes lists (one entry per sample) and returns a list."""
    fn.rlft_batched = True
    return fn
