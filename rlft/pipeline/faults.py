"""Deadlines and restarts for the run's workers (docs/methods.md#faults).

Every wait on a worker is bounded by `train.worker_timeout_s`; a worker past it is reported by name and
phase and killed, so Ray restarts it (actors are created with `max_restarts`). A rollout or reward
worker that comes back gets the current weights and its unfinished work again (rlft.rollout.streaming
re-sends it); a learner that dies or hangs raises `LearnerLost`, and the driver rolls back to the last
checkpoint, up to `train.max_restarts` times.
"""

from __future__ import annotations

import logging

import ray

from rlft.rollout.streaming import WORKER_LOST

log = logging.getLogger("rlft")


class LearnerLost(Exception):
    """The learner died or passed its deadline during `phase`."""

    def __init__(self, phase: str, why: str):
        super().__init__(f"the learner {why} during {phase}")
        self.phase = phase


class LearnerRestarted(Exception):
    """Raised by a learner asked to update or save on behalf of an earlier start of its process: Ray restarted
    it (killed while idle) and it holds the initial weights, not the run's."""


def learner_get(ref, learner, phase: str, timeout_s: float | None):
    """ray.get of a learner call within the deadline; a dead or silent learner raises LearnerLost."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        log.warning("the learner gave no reply in %.0f s during %s; treating it as dead (restarting it)", timeout_s, phase)
        if hasattr(learner, "_actor_id"):  # a single actor (a DeepSpeed LearnerGroup is not restarted)
            ray.kill(learner, no_restart=False)
        raise LearnerLost(phase, f"gave no reply in {timeout_s:.0f} s") from None
    except LearnerRestarted:
        raise LearnerLost(phase, "was found restarted while idle (killed)") from None
    except WORKER_LOST as e:
        raise LearnerLost(phase, f"died ({type(e).__name__})") from None
