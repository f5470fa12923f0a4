"""Response-length prediction for the Infinite-Sampling scheduler, learned online from finished samples.

log(length) of sample j of prompt i is modelled as a prompt effect plus a sample effect:

    log L_ij = mu_i + w . (x_ij - mean_j x_ij) + noise

- x_ij: features of the sample's first k tokens (hashed token shares, mean log-prob, share of unsure
  tokens); w is a ridge regression fitted on within-group deviations only, so it learns what the first
  tokens say about a sample's length relative to its siblings, free of the (large) prompt effect.
- mu_i: a ridge regression on prompt features (length, hashed token shares) gives the prior; the
  finished siblings of the same batch pull it toward their own lengths (shrinkage with weight
  `sibling_prior` for the prior).

Each regression's learned part (its prediction minus its mean) is scaled by a gain in [0, 1], fitted
prequentially: every finished group is first predicted, then learned from, and the gain is the
least-squares slope of what happened on what was predicted. Features that say nothing (a random
model's first tokens, prompts whose lengths follow no pattern) get a gain near 0, so the predictor
falls back to the mean instead of acting on an overfitted regression; features that work keep ~1.

Both regressions decay slowly, so the model follows the policy as training changes its lengths.
"""

from __future__ import annotations

import math

import torch

_HASH = 2654435761  # Knuth's multiplicative hash spreads token ids over the buckets


class _Ridge:
    """Online ridge regression with an unpenalised intercept and exponential forgetting."""

    def __init__(self, dim: int, ridge: float, decay: float):
        self.ridge, self.decay = ridge, decay
        self.count = 0.0  # decayed number of observations
        self.sum_x = torch.zeros(dim, dtype=torch.float64)
        self.sum_y = 0.0
        self.gram = torch.zeros(dim, dim, dtype=torch.float64)
        self.moment = torch.zeros(dim, dtype=torch.float64)
        self.weights = torch.zeros(dim, dtype=torch.float64)
        self._stale = False
        self.gain_num = self.gain_den = 0.0  # decayed sums of learned*(y - mean) and learned^2

    def add(self, x: torch.Tensor, y: float) -> None:
        d = self.decay
        self.count = self.count * d + 1
        self.sum_x.mul_(d).add_(x)
        self.sum_y = self.sum_y * d + y
        self.gram.mul_(d).add_(torch.outer(x, x))
        self.moment.mul_(d).add_(x * y)
        self._stale = True

    def __call__(self, x: torch.Tensor) -> float:
        """Prediction for `x` (0 before any observation): the mean plus the calibrated learned part."""
        mean, learned = self.parts(x)
        return mean + self.gain * learned

    @property
    def gain(self) -> float:
        return min(1.0, max(0.0, self.gain_num / self.gain_den)) if self.gain_den > 0 else 0.0

    def parts(self, x: torch.Tensor) -> tuple[float, float]:
        """(mean of the observed y, raw learned deviation for `x`); (0, 0) before any observation."""
        if not self.count:
            return 0.0, 0.0
        mean_x, mean_y = self.sum_x / self.count, self.sum_y / self.count
        if self._stale:  # solve on centred statistics: the intercept is the mean, never shrunk
            cov = self.gram - self.count * torch.outer(mean_x, mean_x)
            cross = self.moment - self.count * mean_x * mean_y
            eye = torch.eye(len(cross), dtype=torch.float64)
            self.weights = torch.linalg.solve(cov + self.ridge * eye, cross)
            self._stale = False
        return mean_y, float((x - mean_x) @ self.weights)

    def calibrate(self, x: torch.Tensor, y: float) -> None:
        """Before `add(x, y)`: score the learned part on this unseen observation (prequential gain)."""
        mean, learned = self.parts(x)
        if self.count:
            d = self.decay
            self.gain_num = self.gain_num * d + learned * (y - mean)
            self.gain_den = self.gain_den * d + learned * learned


class GroupLengths:
    """What the predictor knows about one prompt's group: probed samples' features, finished samples."""

    __slots__ = ("prompt_x", "probed", "finished")

    def __init__(self, prompt_x: torch.Tensor):
        self.prompt_x = prompt_x
        self.probed: list[torch.Tensor] = []  # first-token features of the group's probed samples
        self.finished: list[tuple[torch.Tensor | None, float]] = []  # (features or None, log length)

    def mean_probed(self) -> torch.Tensor | None:
        return torch.stack(self.probed).mean(0) if self.probed else None


class LengthPredictor:
    """Online predictor of response lengths (counted in tokens)."""

    def __init__(self, buckets: int = 256, prompt_buckets: int = 32, ridge: float = 1.0, decay: float = 0.998,
                 sibling_prior: float = 2.0):
        self.buckets, self.prompt_buckets, self.sibling_prior = buckets, prompt_buckets, sibling_prior
        # few prompt features: one observation per group, so this model sees B times fewer examples
        self.prompt_model = _Ridge(1 + prompt_buckets, 4 * ridge, decay**8)
        self.sample_model = _Ridge(2 + buckets, ridge, decay)
        self.decay = decay
        self.under_sum = self.under_count = 0.0  # decayed sum of log(actual / predicted) where positive, and count

    def observe(self, predicted: float, actual: int) -> None:
        """Record how a prediction the scheduler acted on turned out (for `margin`)."""
        self.under_sum = self.under_sum * self.decay + max(0.0, math.log(max(1, actual) / predicted))
        self.under_count = self.under_count * self.decay + 1

    def margin(self) -> float:
        """Factor a KV budget applies to predicted lengths: exp of twice the mean under-prediction (log scale),
        so a sample that runs past its prediction as far as usual still fits (1.5 before any observation)."""
        return math.exp(2 * self.under_sum / self.under_count) if self.under_count else 1.5

    def prompt_features(self, prompt: list[int]) -> torch.Tensor:
        """[1 + prompt_buckets] float64: log prompt length, hashed token shares."""
        x = [math.log1p(len(prompt)) / 4.0] + [0.0] * self.prompt_buckets
        _bag(x, 1, prompt, self.prompt_buckets)
        return torch.tensor(x, dtype=torch.float64)

    def sample_features(self, tokens: list[int], logprobs: list[float]) -> torch.Tensor:
        """[2 + buckets] float64 from a sample's first generated tokens and their log-probs."""
        n = max(1, len(logprobs))
        x = [sum(logprobs) / n / 4.0, sum(lp < -1.6 for lp in logprobs) / n] + [0.0] * self.buckets  # p < 0.2: unsure
        _bag(x, 2, tokens, self.buckets)
        return torch.tensor(x, dtype=torch.float64)

    def predict(self, group: GroupLengths, x: torch.Tensor | None, max_tokens: int) -> float:
        """Predicted length in tokens of a sample of `group` whose first-token features are `x` (None: unprobed)."""
        deviation = self._deviation(group, x)
        prior = self.prompt_model(group.prompt_x) if self.prompt_model.count else math.log(max_tokens) / 2
        siblings = [y - self._deviation(group, fx) for fx, y in group.finished]
        mu = (self.sibling_prior * prior + sum(siblings)) / (self.sibling_prior + len(siblings))
        return min(float(max_tokens), math.exp(mu + deviation))

    def _deviation(self, group: GroupLengths, x: torch.Tensor | None) -> float:
        mean = group.mean_probed()
        return self.sample_model(x - mean) if x is not None and mean is not None and self.sample_model.count else 0.0

    def finished(self, group: GroupLengths, x: torch.Tensor | None, length: int) -> None:
        """Record a finished sample of `group` (its sibling information for the samples still waiting)."""
        group.finished.append((x, math.log(max(1, length))))

    def learn(self, group: GroupLengths) -> None:
        """Fit both regressions on a completed group."""
        logs = [y for _, y in group.finished]
        mean_y = sum(logs) / len(logs)
        self.prompt_model.calibrate(group.prompt_x, mean_y)
        self.prompt_model.add(group.prompt_x, mean_y)
        probed = [(fx, y) for fx, y in group.finished if fx is not None]
        if len(probed) > 1:
            mean_x = torch.stack([fx for fx, _ in probed]).mean(0)
            mean_py = sum(y for _, y in probed) / len(probed)
            for fx, y in probed:  # all scored before any is learned: the group is unseen data as a whole
                self.sample_model.calibrate(fx - mean_x, y - mean_py)
            for fx, y in probed:
                self.sample_model.add(fx - mean_x, y - mean_py)


def _bag(x: list[float], offset: int, tokens: list[int], buckets: int) -> None:
    """Add the hashed token shares of `tokens` to x[offset:offset + buckets], scaled so a bucket averages
    ~1 over a few tokens and the ridge penalty does not swamp it."""
    for t in tokens:
        x[offset + (t * _HASH) % buckets] += buckets / len(tokens) / 8.0


def prediction_stats(pairs: list[tuple[float, int]]) -> dict[str, float]:
    """`length_predictions` and `length_pred_abs_log_error` (rlft.rollout.types.ENGINE_STATS) of (predicted,
    actual) lengths in tokens; no error without predictions."""
    out = {"length_predictions": float(len(pairs))}
    if pairs:
        out["length_pred_abs_log_error"] = sum(abs(math.log(p / a)) for p, a in pairs) / len(pairs)
    return out
