"""The learner's zeroth-order update (docs/methods.md#zeroth-order-update): the RL surrogate at θ ± εz by forward passes only.

The loss is the first-order path's (rlft/learner/loss.py: same advantages, aggregation weights,
clipping, KL and entropy terms) with π_old = the behaviour log-probs from the rollout (or the
recomputed old policy when a batch takes several optimizer steps). Its micro-batch shares add up
to the mini-batch loss, so micro-batching changes nothing but memory.
"""

from __future__ import annotations

import torch

from rlft.learner.logprobs import logprobs_from_logits
from rlft.learner.loss import micro_batch_loss
from rlft.learner.types import TrainBatch
from rlft.optim.zo import perturbed
from rlft.optim.zo2 import ZO2Offload


@torch.no_grad()
def zo_update(learner, minibatch: TrainBatch, old: torch.Tensor | None, ref: torch.Tensor | None) -> dict[str, float]:
    """One zeroth-order optimizer step of `learner` on `minibatch`; the loss statistics are means over the 2K evaluations."""
    cfg = learner.cfg
    # the fused log-prob reads the LM head outside its module's forward: perturb it for the whole evaluation
    whole = [learner.model.get_output_embeddings()] if learner.fused_logprobs else []
    evaluations: list[dict[str, float]] = []  # per evaluation: each statistic summed over micro-batches
    with_entropy = bool(cfg.algo.entropy_coef)

    def surrogate(logprobs_of) -> float:
        """The mini-batch loss; `logprobs_of(part, rows)` gives micro-batch part's (logprobs, entropy)."""
        total, summed = 0.0, {}
        for rows in learner._micro_batches(minibatch):
            part = minibatch.select(rows)
            width = part.tokens.shape[1]
            logprobs, entropy = logprobs_of(part, rows)
            loss, stats = micro_batch_loss(
                logprobs,
                old[rows, :width] if old is not None else part.rollout_logprobs,
                part.response_mask, part.advantages, part.weights, part.token_weights, cfg.algo,
                ref_logprobs=ref[rows, :width] if ref is not None else None,
                entropy=entropy, rollout_logprobs=part.rollout_logprobs,
            )
            total += loss.item()
            for k, v in stats.items():
                summed[k] = max(summed.get(k, v), v) if k == "ratio_max" else summed.get(k, 0.0) + v
        evaluations.append(summed)
        return total

    if cfg.optim.zo_offload:
        stats = _offloaded_step(learner, minibatch, surrogate, with_entropy)
    else:
        def loss_at(perturb) -> float:
            with perturbed(learner.model, learner.optimizer.index, perturb, whole):
                return surrogate(lambda part, rows: learner._logprobs(learner.model, part, with_entropy=with_entropy))

        stats = learner.optimizer.step(loss_at)
    for k in evaluations[0]:
        values = [e[k] for e in evaluations]
        stats[k] = max(values) if k == "ratio_max" else sum(values) / len(values)
    stats["nonfinite_steps"] = stats["zo/nonfinite"]  # counted with the first-order path's skipped steps
    return stats


def _offloaded_step(learner, minibatch: TrainBatch, surrogate, with_entropy: bool) -> dict[str, float]:
    """ZO2 (optim.zo_offload): blocks streamed from the CPU, the whole mini-batch carried through each block.

    The blocks run with causal attention only: rows are right-padded, so every real token sees the
    same keys as under the padding mask (pad positions carry no loss). The driver syncs weights after
    every step, so the deferred update is applied (on the CPU) at the end of the step.
    """
    if getattr(learner, "zo2", None) is None:
        learner.zo2 = ZO2Offload(learner.model, learner.optimizer, learner.device)
    head = learner.model.get_output_embeddings()
    norm = learner.model.get_decoder().norm
    temperature = learner.cfg.rollout.temperature or 1.0

    def loss_of_hidden(hidden):
        def logprobs_of(part, rows):
            logits = head(norm(hidden[rows, : part.tokens.shape[1]]))
            return logprobs_from_logits(logits, part.tokens, temperature, with_entropy)

        return surrogate(logprobs_of)

    stats = learner.zo2.step(minibatch.tokens, loss_of_hidden)
    learner.zo2.flush()
    return stats
