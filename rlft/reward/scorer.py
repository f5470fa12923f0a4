"""Scoring completions with the configured weighted reward functions (runs inside reward actors).

    scorer = RewardScorer(cfg.reward)            # loads every function now: bad files fail at start
    rewards, metrics = scorer.score(prompts, completions, rows)
    check_failure_rate(metrics, cfg.reward)      # the driver calls it after saving a checkpoint
    scorer.close()

A failed call (exception, wrong return type, NaN/inf, timeout, crashed worker) gives that function's
term the configured `failure_reward`; the other functions of the same sample still count.
"""

from __future__ import annotations

import logging
import time

from rlft.errors import UserError
from rlft.reward.pool import WorkerPool
from rlft.reward.registry import RewardFunction, load_reward

logger = logging.getLogger("rlft.reward")
ASYNC_GRACE_S = 1.0  # an async chunk's hard deadline: its coroutines run concurrently, each with timeout_s


class RewardFailureError(UserError):
    """Too many samples of a step failed in reward functions: the run stops (after a checkpoint)."""


class RewardScorer:
    """Weighted sum of reward functions, evaluated in worker processes with a time limit per call."""

    def __init__(self, reward_cfg):
        self.cfg = reward_cfg
        self.functions: list[RewardFunction] = [
            load_reward(spec.name, spec.args, spec.weight) for spec in reward_cfg.functions
        ]
        self.names = _metric_names([f.spec for f in self.functions])
        specs = [(f.locator, f.args) for f in self.functions]
        self.pool = WorkerPool(specs, reward_cfg.num_processes, reward_cfg.timeout_s)

    def score(self, prompts: list[str], completions: list[str], rows: list[dict]) -> tuple[list[float], dict]:
        """Rewards (one per completion) and step metrics (per-function means, failures, failure rate)."""
        start, restarts = time.monotonic(), self.pool.restarts
        samples = [
            (p, c, {k: v for k, v in row.items() if k not in ("prompt", "completion")})
            for p, c, row in zip(prompts, completions, rows, strict=True)
        ]
        jobs, deadlines, owners = [], [], []  # owners[j] = (function index, first sample index)
        for i, function in enumerate(self.functions):
            for first, chunk in self._chunks(function, samples):
                jobs.append((i, chunk))
                deadlines.append(self.cfg.timeout_s + (ASYNC_GRACE_S if function.is_async else 0.0))
                owners.append((i, first))
        outcomes = [[None] * len(samples) for _ in self.functions]
        for (i, first), result in zip(owners, self.pool.run(jobs, deadlines)):
            outcomes[i][first : first + len(result)] = result
        rewards, metrics = self._combine(outcomes, len(samples))
        metrics["reward/worker_restarts"] = self.pool.restarts - restarts
        metrics["reward/time_s"] = time.monotonic() - start
        return rewards, metrics

    def _chunks(self, function: RewardFunction, samples: list) -> list[tuple[int, list]]:
        # plain functions: one sample per job, so a hang costs one sample; batched: the whole step in
        # one call; async: one concurrent chunk per worker
        if not samples:
            return []
        if function.batched:
            return [(0, samples)]
        if function.is_async:
            size = -(-len(samples) // self.pool.size)
            return [(k, samples[k : k + size]) for k in range(0, len(samples), size)]
        return [(k, [s]) for k, s in enumerate(samples)]

    def _combine(self, outcomes: list[list[tuple]], n: int) -> tuple[list[float], dict]:
        rewards = [0.0] * n
        failed = [False] * n
        metrics: dict[str, float] = {}
        first_failure = None
        timeouts = 0
        for function, name, results in zip(self.functions, self.names, outcomes):
            values, parts = [], {}
            metrics[f"reward/{name}/failures"] = 0
            for s, outcome in enumerate(results):
                if outcome[0] == "ok":
                    value = outcome[1]
                    if isinstance(value, dict):
                        for key, v in value.items():
                            parts.setdefault(key, []).append(v)
                        value = value["reward"] if "reward" in value else sum(value.values())
                else:
                    _, kind, message, trace = outcome
                    value, failed[s] = self.cfg.failure_reward, True
                    timeouts += kind == "timeout"
                    metrics[f"reward/{name}/failures"] += 1
                    first_failure = first_failure or (function.spec, s, kind, trace)
                values.append(value)
                rewards[s] += function.weight * value
            metrics[f"reward/{name}"] = sum(values) / max(n, 1)
            for key, vs in parts.items():
                metrics[f"reward/{name}/{key}"] = sum(vs) / len(vs)
        failures = sum(failed)
        metrics.update({
            "reward/failures": failures,
            "reward/failure_rate": failures / max(n, 1),
            "reward/timeouts": timeouts,
        })
        if first_failure:
            spec, s, kind, trace = first_failure
            logger.warning(
                "reward functions failed on %d of %d samples (scored %s); first failure, %s in %r on sample %d:\n%s",
                failures, n, self.cfg.failure_reward, kind, spec, s, trace.rstrip(),
            )
        return rewards, metrics

    def close(self) -> None:
        """Stop the worker processes."""
        self.pool.close()

    def __enter__(self) -> RewardScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_failure_rate(metrics: dict, reward_cfg) -> None:
    """Raise RewardFailureError when this step's failure rate is above `reward_cfg.max_failure_rate`."""
    rate = metrics.get("reward/failure_rate", 0.0)
    if rate > reward_cfg.max_failure_rate:
        raise RewardFailureError(
            f"reward functions failed on {rate:.0%} of this step's samples ({metrics.get('reward/failures', 0)}"
            f" samples, {metrics.get('reward/timeouts', 0)} timeouts), above reward.max_failure_rate="
            f"{reward_cfg.max_failure_rate}; the 'rlft.reward' log shows an example traceback. Fix the reward "
            "function, raise reward.timeout_s if calls time out, or raise reward.max_failure_rate"
        )


def _metric_names(specs: list[str]) -> list[str]:
    """Short metric names: 'math', 'file.py:score' -> 'score'; repeats get '_2', '_3'."""
    names: list[str] = []
    for spec in specs:
        base = spec.rpartition(":")[2]
        name, k = base, 2
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names
