"""A reward worker process: loads the reward functions once, then scores the jobs the pool sends.

    python -m rlft.reward.worker FD       (started by rlft.reward.pool; FD is its end of a socket pair)

Messages are pickled tuples. In: ("init", sys_path, [(locator, args)], timeout_s) once, then
("call", function index, samples) where a sample is (prompt, completion, fields). Out: ("ready",)
or ("error", traceback) after init, then one list of outcomes per call, each ("ok", value) with a
checked value, or ("error", kind, message, traceback) with kind "exception", "type", "nonfinite" or
"timeout".
"""

from __future__ import annotations

import asyncio
import importlib
import math
import numbers
import os
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection


def main(fd: int) -> None:
    conn = Connection(fd)
    _exit_when_orphaned()
    _, sys_path, specs, timeout_s = conn.recv()
    sys.path[:0] = [p for p in sys_path if p not in sys.path]
    from rlft.reward.registry import load_reward_fn  # after sys.path: user modules may live anywhere

    try:
        functions = [(load_reward_fn(locator), args) for locator, args in specs]
        for fn, _ in functions:  # heavy imports now, not inside the first call's time limit
            if getattr(fn, "preload", None):
                importlib.import_module(fn.preload)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready",))
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the pool closed us
            return
        _, index, samples = message
        fn, args = functions[index]
        conn.send(call(fn, args, samples, timeout_s))


def call(fn, args: dict, samples: list[tuple], timeout_s: float) -> list[tuple]:
    """Outcomes of `fn` on `samples`, one per sample, whatever the function does short of hanging."""
    batched = getattr(fn, "rlft_batched", False)
    if asyncio.iscoroutinefunction(fn):
        return asyncio.run(_call_async(fn, args, samples, timeout_s, batched))
    if batched:
        prompts, completions, fields = _columns(samples, args)
        try:
            return _check_batch(fn(prompts, completions, **fields), len(samples))
        except BaseException as e:
            return [_error(e)] * len(samples)
    outcomes = []
    for prompt, completion, fields in samples:
        try:
            outcomes.append(("ok", check_value(fn(prompt, completion, **{**fields, **args}))))
        except BaseException as e:
            outcomes.append(_error(e))
    return outcomes


async def _call_async(fn, args: dict, samples: list[tuple], timeout_s: float, batched: bool) -> list[tuple]:
    # each coroutine gets its own time limit; the pool's deadline backs this up if one blocks the loop
    if batched:
        prompts, completions, fields = _columns(samples, args)
        try:
            return _check_batch(await asyncio.wait_for(fn(prompts, completions, **fields), timeout_s), len(samples))
        except BaseException as e:
            return [_error(e)] * len(samples)

    async def one(prompt, completion, fields):
        try:
            value = await asyncio.wait_for(fn(prompt, completion, **{**fields, **args}), timeout_s)
            return ("ok", check_value(value))
        except asyncio.TimeoutError:
            message = f"async reward call exceeded its time limit of {timeout_s} s and was cancelled"
            return ("error", "timeout", message, message)
        except BaseException as e:
            return _error(e)

    return list(await asyncio.gather(*(one(*s) for s in samples)))


class WrongType(TypeError):
    """A reward function returned something that is not a reward."""


class NotFinite(ValueError):
    """A reward function returned NaN or an infinity."""


def check_value(value) -> float | dict[str, float]:
    """A float, or a dict of str -> float; anything else (or NaN/inf) raises."""
    if isinstance(value, dict):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise WrongType(f"reward dict keys must be str, got {type(key).__name__}")
            out[key] = _finite(v, f"[{key!r}]")
        if not out:
            raise WrongType("reward dict is empty")
        return out
    return _finite(value, "")


def _finite(value, where: str) -> float:
    if not isinstance(value, numbers.Real):  # bool and numpy scalars are Real; str, None, tensors are not
        raise WrongType(f"reward{where} is a {type(value).__name__}; a reward is a float or a dict[str, float]")
    value = float(value)
    if not math.isfinite(value):
        raise NotFinite(f"reward{where} is not finite: {value}")
    return value


def _columns(samples: list[tuple], args: dict) -> tuple[list, list, dict]:
    """Samples as columns for a batched call: prompts, completions and each field as a list."""
    keys = {k for _, _, fields in samples for k in fields}
    columns = {k: [fields.get(k) for _, _, fields in samples] for k in keys}
    return [s[0] for s in samples], [s[1] for s in samples], {**columns, **args}


def _check_batch(values, n: int) -> list[tuple]:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        got = f"{type(values).__name__} of length {len(values)}" if hasattr(values, "__len__") else type(values).__name__
        raise WrongType(f"a batched reward must return a list of {n} rewards, got {got}")
    outcomes = []
    for value in values:
        try:
            outcomes.append(("ok", check_value(value)))
        except Exception as e:
            outcomes.append(_error(e))
    return outcomes


def _error(e: BaseException) -> tuple:
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        kind = "timeout"
    elif isinstance(e, WrongType):
        kind = "type"
    elif isinstance(e, NotFinite):
        kind = "nonfinite"
    else:
        kind = "exception"
    return ("error", kind, f"{type(e).__name__}: {e}", "".join(traceback.format_exception(e)))


def _exit_when_orphaned() -> None:
    """Exit if the trainer dies, even while a reward function hangs in the main thread."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


if __name__ == "__main__":
    main(int(sys.argv[1]))
