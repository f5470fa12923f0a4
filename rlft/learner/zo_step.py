"""The learner's zeroth-order update (DESIGN 4.10): the RL surrogate at θ ± εz by forward passes only.

The loss is the first-order path's (rlft/learner/loss.py: same advantages, aggregation weights,
clipping, KL and entropy terms) with π_old = the behaviour log-probs from the rollout (or the
recomputed old policy when a batch takes several optimizer steps). Its micro-batch shares add up
to the mini-batch loss, so micro-batching changes nothing but memory.
"""

from __future__ import annotations

import torch

from rlft.learner.loss import micro_batch_loss
from rlft.learner.types import TrainBatch
from rlft.optim.zo import perturbed


@torch.no_grad()
def zo_update(learner, minibatch: TrainBatch, old: torch.Tensor | None, ref: torch.Tensor | None) -> dict[str, float]:
    """One zeroth-order optimizer step of `learner` on `minibatch`; the loss statistics are means over the 2K evaluations."""
    cfg, size = learner.cfg, learner.cfg.learner.micro_batch_size
    # the fused log-prob reads the LM head outside its module's forward: perturb it for the whole evaluation
    whole = [learner.model.get_output_embeddings()] if cfg.learner.logprobs == "fused" else []
    evaluations: list[dict[str, float]] = []  # per evaluation: each statistic summed over micro-batches

    def loss_at(perturb) -> float:
        total, summed = 0.0, {}
        with perturbed(learner.model, learner.optimizer.index, perturb, whole):
            for s in range(0, len(minibatch), size):
                part = minibatch.select(slice(s, s + size))
                width = part.tokens.shape[1]
                logprobs, entropy = learner._logprobs(learner.model, part, with_entropy=bool(cfg.algo.entropy_coef))
                loss, stats = micro_batch_loss(
                    logprobs,
                    old[s : s + size, :width] if old is not None else part.rollout_logprobs,
                    part.response_mask, part.advantages, part.weights, part.token_weights, cfg.algo,
                    ref_logprobs=ref[s : s + size, :width] if ref is not None else None,
                    entropy=entropy, rollout_logprobs=part.rollout_logprobs,
                )
                total += loss.item()
                for k, v in stats.items():
                    summed[k] = max(summed.get(k, v), v) if k == "ratio_max" else summed.get(k, 0.0) + v
        evaluations.append(summed)
        return total

    stats = learner.optimizer.step(loss_at)
    for k in evaluations[0]:
        values = [e[k] for e in evaluations]
        stats[k] = max(values) if k == "ratio_max" else sum(values) / len(values)
    return stats
