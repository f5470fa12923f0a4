"""Transfer-learning RLHF (TPO, docs/methods.md#transfer-tpo): which source picks a prompt's extra samples, and how they count.

Arms are the source reward functions plus the null arm (plain sampling). For a source arm the
group is G - r plain samples plus the r of N extra samples the source ranks highest; rewards and
advantages still come from the target reward. The pieces here are pure (no Ray, no model):

    arms = UCBArms(["last_digit", "random_score"], beta=1.0, null_bar=0.55, refresh_prompts=32)
    chosen = arms.choose(num_prompts)                       # one arm name per prompt
    group, transferred = compose_group(samples, source_scores, plain=G - r, r=r)
    arms.record(arm, win_credit(target_rewards, transferred))
"""

from __future__ import annotations

import math
from typing import Sequence

NULL_ARM = "null"


def compose_group(samples: Sequence, extra_scores: Sequence[float], plain: int, r: int) -> tuple[list, list[bool]]:
    """The first `plain` samples plus the top `r` of the rest by source score; and which were transferred.

    Samples are i.i.d. draws, so the first `plain` are a random subset, and among equal scores the
    earlier extra sample is a random pick too (Python's sort is stable).
    """
    extra = list(samples[plain:])
    if len(extra) != len(extra_scores) or r > len(extra):
        raise ValueError(f"{len(extra)} extra samples, {len(extra_scores)} source scores, r = {r}")
    order = sorted(range(len(extra)), key=lambda i: -extra_scores[i])
    return list(samples[:plain]) + [extra[i] for i in order[:r]], [False] * plain + [True] * r


def win_credit(target_rewards: Sequence[float], transferred: Sequence[bool]) -> float | None:
    """1.0 if a transferred sample has the group's best target reward and no plain sample does, 0.0 if
    a plain sample beats every transferred one, None (no evidence) when the two sides' best tie.

    With 0/1 rewards most groups tie (all right or all wrong), and a tie says nothing about the
    source; counting it as a win would let any source clear the bar, counting it as a loss (or a
    half) would drown a perfect ranker near 0.5. Among decided groups a source that ranks at random
    wins with probability 1/2 when r = G - r (and less when r < G - r), so the null arm's fixed bar
    of 0.55 reads "better than chance by a margin".
    """
    best_t = max(float(x) for x, t in zip(target_rewards, transferred) if t)
    best_p = max(float(x) for x, t in zip(target_rewards, transferred) if not t)
    return 1.0 if best_t > best_p else 0.0 if best_t < best_p else None


class UCBArms:
    """UCB over the source arms: score(c) = win[c] / n[c] + beta / sqrt(n[c]); the null arm scores `null_bar`.

    n[c] counts the groups that decided (see `win_credit`); an arm without one scores +inf, so every
    source is tried. The choice is refreshed every
    `refresh_prompts` prompts (all prompts in between get the same arm); outcomes recorded in the
    meantime enter at the next refresh.
    """

    def __init__(self, sources: list[str], beta: float = 1.0, null_bar: float = 0.55, refresh_prompts: int = 32):
        if NULL_ARM in sources or len(set(sources)) != len(sources):
            raise ValueError(f"source arm names must be distinct and not {NULL_ARM!r}: {sources}")
        self.arms = [*sources, NULL_ARM]
        self.beta, self.null_bar, self.refresh_prompts = beta, null_bar, refresh_prompts
        self.wins = {a: 0.0 for a in sources}
        self.n = {a: 0 for a in sources}
        self.picks = {a: 0 for a in self.arms}
        self._choice: str | None = None
        self._since_refresh = 0

    def score(self, arm: str) -> float:
        if arm == NULL_ARM:
            return self.null_bar
        if self.n[arm] == 0:
            return math.inf
        return self.wins[arm] / self.n[arm] + self.beta / math.sqrt(self.n[arm])

    def choose(self, num_prompts: int) -> list[str]:
        """The arm of each of the next `num_prompts` prompts."""
        chosen = []
        for _ in range(num_prompts):
            if self._choice is None or self._since_refresh >= self.refresh_prompts:
                self._choice = max(self.arms, key=self.score)  # ties: the earlier arm (sources before null)
                self._since_refresh = 0
            chosen.append(self._choice)
            self._since_refresh += 1
            self.picks[self._choice] += 1
        return chosen

    def record(self, arm: str, credit: float | None) -> None:
        """One prompt's outcome for source arm `arm` (from `win_credit`; None, a tie, counts nothing)."""
        if credit is not None:
            self.wins[arm] += credit
            self.n[arm] += 1

    def metrics(self) -> dict[str, float]:
        """transfer/<arm>/picks (prompts so far); for sources also n (decided groups) and win_rate (once n > 0)."""
        out: dict[str, float] = {}
        for arm in self.arms:
            out[f"transfer/{arm}/picks"] = self.picks[arm]
            if arm != NULL_ARM:
                out[f"transfer/{arm}/n"] = self.n[arm]
                if self.n[arm]:
                    out[f"transfer/{arm}/win_rate"] = self.wins[arm] / self.n[arm]
        return out

    def state_dict(self) -> dict:
        return {"wins": dict(self.wins), "n": dict(self.n), "picks": dict(self.picks)}

    def load_state_dict(self, state: dict) -> None:
        self.wins.update(state["wins"])
        self.n.update(state["n"])
        self.picks.update(state["picks"])
