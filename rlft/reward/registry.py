"""Reward functions by name, and loading user functions from `file.py:fn` or `package.module:fn`.

A reward function has one documented signature:

    def my_reward(prompt: str, completion: str, **fields) -> float | dict[str, float]

`fields` are the dataset row's fields (e.g. `answer`). A dict return names several scores; its
"reward" entry (or, without one, the sum of its values) is the sample's reward.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from rlft.errors import UserError
from rlft.registry import Registry

RewardFn = Callable[..., "float | dict[str, float]"]
REWARDS: Registry[RewardFn] = Registry("reward")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available as `--reward name`."""
    return REWARDS.register(name)


def load_reward_fn(spec: str) -> RewardFn:
    """A registered name, `path/to/file.py:fn` or `package.module:fn` -> the function."""
    if ":" not in spec:
        _import_builtin_rewards()
        return REWARDS.get(spec, key="reward")
    target, _, fn_name = spec.rpartition(":")
    if target.endswith(".py") or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise UserError(f"reward file {target!r} does not exist (from --reward {spec})")
        module_name = f"rlft_user_reward_{abs(hash(str(path.resolve())))}"
        try:
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        except Exception as e:
            raise UserError(f"reward file {target!r} failed to import: {type(e).__name__}: {e}") from None
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise UserError(f"reward module {target!r} failed to import: {type(e).__name__}: {e}") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise UserError(f"reward {spec!r}: {target!r} has no function {fn_name!r}")
    return fn


def _import_builtin_rewards() -> None:
    import rlft.reward.builtin  # noqa: F401  (registers the built-in rewards)
