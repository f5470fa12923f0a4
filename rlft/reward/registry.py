"""Reward functions by name, and loading user functions from `file.py:fn` or `package.module:fn`.

A reward function has one documented signature:

    def my_reward(prompt: str, completion: str, **fields) -> float | dict[str, float]

`fields` are the dataset row's fields (e.g. `answer`) plus the spec's `args`. A dict return names
several scores, each logged as `reward/<function>/<key>`; its "reward" entry (or, without one, the
sum of its values) is the sample's reward. Two other forms:

    @batched                                   # one call per step, every argument a list
    def my_rewards(prompts, completions, **fields) -> list[float | dict[str, float]]

    async def my_reward(prompt, completion, **fields)   # awaited concurrently (calls to services)

`async def` also works with `@batched`. Rewards run in worker processes (rlft.reward.pool), so a
function that raises, returns a wrong type or NaN, or hangs costs one sample, not the run. A
function may set `fn.preload = "some.module"`: workers import it at start, outside any time limit.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import rlft.reward.builtin  # noqa: F401  (registers the built-in rewards)
import rlft.reward.transfer_sources  # noqa: F401  (and the TPO example sources)
from rlft.errors import UserError
from rlft.reward.names import REWARDS, RewardFn, batched, register_reward  # noqa: F401  (re-exported)

@dataclass
class RewardFunction:
    """A loaded reward: how to find it again in a worker process, and how to call it."""

    spec: str  # as the user wrote it
    locator: str  # 'name' or an absolute 'file.py:fn' / 'module:fn' a worker process can load
    fn: RewardFn
    args: dict = field(default_factory=dict)  # keyword arguments added to every call
    weight: float = 1.0

    @property
    def batched(self) -> bool:
        return bool(getattr(self.fn, "rlft_batched", False))

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


def load_reward(spec: str, args: dict | None = None, weight: float = 1.0) -> RewardFunction:
    """Load `spec` and work out how a worker process will load the same function."""
    fn = load_reward_fn(spec)
    if ":" in spec:
        target, _, name = spec.rpartition(":")
        locator = f"{Path(target).resolve()}:{name}" if _is_file(target) else spec
    elif fn.__module__.startswith("rlft."):
        locator = spec
    elif fn.__module__ == "__main__":
        raise UserError(
            f"reward {spec!r} is registered in the __main__ script, which reward worker processes cannot "
            "import; move it into a module or a file and pass 'file.py:function'"
        )
    else:  # registered by a user module: importing that module again registers it again
        locator = f"{fn.__module__}:{fn.__qualname__}"
    return RewardFunction(spec, locator, fn, dict(args or {}), weight)


def load_reward_fn(spec: str) -> RewardFn:
    """A registered name, `path/to/file.py:fn` or `package.module:fn` -> the function."""
    if ":" not in spec:
        return REWARDS.get(spec, key="reward")
    target, _, fn_name = spec.rpartition(":")
    if _is_file(target):
        module = _import_file(target, spec)
        where = f"reward file {target!r}"
    else:
        try:
            module = importlib.import_module(target)
        except Exception as e:
            raise UserError(f"reward module {target!r} (from {spec!r}) failed to import: {_describe(e)}") from None
        where = f"reward module {target!r}"
    fn = getattr(module, fn_name, None)
    if fn is None:
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserError(f"{where} has no function {fn_name!r} (it defines: {', '.join(defined) or 'none'})")
    if not callable(fn):
        raise UserError(f"{where}: {fn_name!r} is a {type(fn).__name__}, not a function")
    return fn


def _is_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or "\\" in target


def _import_file(target: str, spec: str):
    path = Path(target)
    if not path.is_file():
        raise UserError(f"reward file {target!r} does not exist (from {spec!r})")
    module_name = f"rlft_user_reward_{path.stem}_{abs(hash(str(path.resolve())))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise UserError(f"reward file {target!r} failed to import: {_describe(e, path)}") from None
    return module


def _describe(error: Exception, path: Path | None = None) -> str:
    """'NameError: ... (file.py, line 3)': the error and, when known, where in the user's file."""
    text = f"{type(error).__name__}: {error}"
    if path is not None and not isinstance(error, SyntaxError):  # a SyntaxError names its line itself
        frames = [f for f in traceback.extract_tb(error.__traceback__) if Path(f.filename) == path]
        if frames:
            text += f" (line {frames[-1].lineno})"
    return text
