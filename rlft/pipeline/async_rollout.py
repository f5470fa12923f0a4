"""Asynchronous training (docs/methods.md#asynchronous-training): the batches of the next
`train.max_staleness` steps are drawn in the background while the learner trains on this one (after the first
`train.on_policy_steps` steps, which are drawn on-policy).

One background thread draws the batches in step order. Each draw first loads the weights it was handed
when it was submitted into the rollout workers, so rollout workers change weights only between batches,
and step j's batch is always drawn by the policy after update j - 1 - max_staleness (or the first one):
the run is deterministic and, with max_staleness 0, the synchronous run itself. The driver thread never
talks to the rollout workers while a draw is in flight: evaluation and checkpoints call `wait()` first.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from rlft.learner.types import TrainBatch



@dataclass
class Draw:
    """One step's scored groups and what it cost; `version`: learner updates behind the weights that drew it."""

    step: int
    version: int
    groups: object  # shaping.Groups
    metrics: dict[str, float]
    timings: dict[str, float]  # seconds: rollout, reward
    generated: dict[str, int]  # samples, tokens, scored
    engine: dict[str, float]  # the rollout engines' statistics of this draw (rollout/types.py ENGINE_STATS)
    # the learner batch, built by the draw (in async mode on the rollout thread, off the step's critical path);
    # None where the step builds it (it needs the learner's reference log-probs, or no group was kept)
    batch: TrainBatch | None = None

    def staleness(self, trained_version: int) -> dict[str, float]:
        """Staleness (learner updates between drawing and training) over this batch's samples."""
        lags = [trained_version - c["policy_version"] for g in self.groups.completions for c in g] or [0]
        return {"async/staleness_mean": sum(lags) / len(lags), "async/staleness_max": float(max(lags))}


class RolloutQueue:
    """Draws steps' batches ahead of the learner, at most `max_staleness` steps ahead, up to `last_step`.

    `draw(step, version)` is the synchronous rollout and reward phase; `load_weights(ref)` hands the rollout
    workers the weights each draw starts from; `mark_busy(True)` is called when a draw is submitted to an idle
    queue and `mark_busy(False)` when the last one submitted ends (the rollout side's share of the cores:
    rlft.pipeline.process.CoreShare).
    """

    def __init__(self, draw: Callable[[int, int], Draw], load_weights: Callable[[object], None], max_staleness: int,
                 last_step: int, mark_busy: Callable[[bool], None] | None = None, on_policy_steps: int = 0):
        self._draw, self._load_weights = draw, load_weights
        self.max_staleness, self.last_step, self.on_policy_steps = max_staleness, last_step, on_policy_steps
        self._mark_busy = mark_busy or (lambda busy: None)
        self._pending, self._lock = 0, threading.Lock()  # draws submitted and not yet ended
        self._futures: dict[int, Future] = {}
        self._jobs: queue.Queue = queue.Queue()
        # a daemon thread, not an executor: a run stopped mid-draw must not wait for it at exit
        self._thread = threading.Thread(target=self._serve, name="rlft-rollout", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            step, version, weights, future = job
            try:
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    self._load_weights(weights)
                    future.set_result(self._draw(step, version))
                except BaseException as e:  # handed to the driver thread, raised where it takes the batch
                    future.set_exception(e)
            finally:
                self._ended()

    def _ended(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending == 0:
                self._mark_busy(False)

    def fill(self, step: int, weights: Callable[[], object], version: int) -> None:
        """Submit the draws of steps up to `step + max_staleness` not yet submitted, from the weights of
        `version` (the learner's updates so far; `weights()` is called once, only if something is submitted).
        Before step `on_policy_steps` only this step's: steps 1..on_policy_steps are drawn on-policy."""
        ahead = self.max_staleness if step >= self.on_policy_steps else 0
        todo = [j for j in range(step, min(step + ahead, self.last_step) + 1) if j not in self._futures]
        ref = weights() if todo else None
        for j in todo:
            self._futures[j] = Future()
            with self._lock:
                self._pending += 1
                if self._pending == 1:
                    self._mark_busy(True)
            self._jobs.put((j, version, ref, self._futures[j]))

    def take(self, step: int) -> Draw:
        """Step `step`'s batch (waits for it)."""
        return self._futures.pop(step).result()

    def wait(self) -> list[Draw]:
        """Every submitted draw, finished (the rollout workers are idle afterwards), in step order."""
        return [self._futures[j].result() for j in sorted(self._futures)]

    def restore(self, draws: list[Draw]) -> None:
        """Put back the draws a checkpoint held in flight, as if they had been drawn by this queue."""
        for d in draws:
            self._futures[d.step] = Future()
            self._futures[d.step].set_result(d)

    def close(self, wait: bool = False) -> None:
        """Stop drawing: draws not started are dropped; with `wait`, the one in progress is let finish."""
        for future in self._futures.values():
            future.cancel()
        self._jobs.put(None)
        if wait:
            self._thread.join()
