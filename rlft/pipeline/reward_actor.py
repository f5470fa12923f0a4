"""The reward actor: scores completions in its own process.

It lives apart from the other actors (rlft/pipeline/actors.py) so that its process imports neither torch nor
the model and learner code, which would cost it ~420 MiB of resident memory for nothing: a reward worker of the
embedded default peaked at 490 MiB when it shared their module. A reward function that needs torch imports it
itself."""

from __future__ import annotations

import resource
import sys

from rlft.reward.scorer import RewardScorer


class RewardWorker:
    """Scores completions with the configured reward functions."""

    def __init__(self, cfg):
        self.scorer = RewardScorer(cfg.reward)  # loads every function now: a bad one fails at start
        if "torch" in sys.modules:  # a reward function computes with torch: its threads, as every actor's
            from rlft.pipeline.process import set_torch_threads

            set_torch_threads(cfg)

    def score(self, prompts: list[str], completions: list[str], rows: list[dict]) -> tuple[list[float], dict]:
        return self.scorer.score(prompts, completions, rows)

    def peak_memory_bytes(self) -> int:
        # as rlft.pipeline.process.peak_rss_bytes, whose module imports torch (Linux reports KiB)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
