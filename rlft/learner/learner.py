"""The policy learner (plain torch, one process): log-probs, loss, micro-batched update, checkpoints."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch

from rlft.learner.attention import use_fp32_attention
from rlft.learner.logprobs import token_logprobs, use_fused_logprobs
from rlft.learner.loss import drop_zero_gradient_rows, micro_batch_loss
from rlft.learner.micro_batches import micro_batch_rows
from rlft.learner.neuzip import NeuZip
from rlft.learner.packing import pack_cap, pack_units, packable, packed_logprobs, prompt_groups, unit_lengths
from rlft.lora import apply_lora, export_peft_adapter, lora_before_step, merged_state_dict, save_merged
from rlft.models.flat_weights import FlatWeights
from rlft.models.loading import load_causal_lm, load_model_weights, pick_device, resolve_model_path
from rlft.optim import build_optimizer, needs_backward
from rlft.learner.types import TrainBatch
from rlft.learner.zo_step import zo_update


def merge_stats(totals: dict[str, float], stats: dict[str, float]) -> None:
    """Add `stats` into `totals`: sums, except ratio_max, which keeps the largest."""
    for k, v in stats.items():
        totals[k] = max(totals.get(k, v), v) if k == "ratio_max" else totals.get(k, 0.0) + v


class Learner:
    """Holds the policy, the optional frozen reference and the optimizer; one `train_step` per batch."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.device = pick_device(cfg.learner.device)
        torch.manual_seed(cfg.train.seed)
        self.model = load_causal_lm(cfg.model, self.device)
        self.lora = cfg.lora.kind != "none"
        if self.lora:
            apply_lora(self.model, cfg.lora)
        if cfg.learner.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
            if self.lora:  # frozen embeddings: checkpointed blocks still need an input that wants grad
                self.model.enable_input_require_grads()
        if cfg.learner.autocast == "bfloat16" and self.device.type == "cpu":
            use_fp32_attention(self.model)  # bf16 linear layers, fp32 attention (rlft.learner.attention)
        self.model.train()
        self.fused_logprobs = use_fused_logprobs(cfg.learner.logprobs, self.model.config)
        self.share_prompts = cfg.learner.share_prompts and packable(self.model)
        self.pack_cap = pack_cap(self.model.config, cfg.learner.max_tokens_per_micro_batch)
        self.neuzip = None
        if cfg.learner.weight_compression == "neuzip":  # the fused log-prob reads the LM head outside its forward
            self.neuzip = NeuZip(self.model, keep=[self.model.get_output_embeddings()] if self.fused_logprobs else [])
        self.train_model = self.model  # what the training forward runs through (DeepSpeed: its engine)
        self.ref_model = None
        if cfg.algo.kl_coef > 0:
            self.ref_model = load_causal_lm(cfg.model, self.device).eval().requires_grad_(False)
            if cfg.learner.autocast == "bfloat16" and self.device.type == "cpu":
                use_fp32_attention(self.ref_model)  # the reference's log-probs computed as the policy's
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg.optim)
        warmup = cfg.optim.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0
        )
        self.optimizer_steps = 0
        self.before_pass = None  # called before each micro-batch pass (the learner actor picks its threads there)

    def _logprobs(self, model, part: TrainBatch, with_entropy: bool = False):
        fused = self.fused_logprobs
        # learner.autocast: bf16 matmuls (AMX / tensor cores) over fp32 master weights; log-softmax stays fp32
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.learner.autocast == "bfloat16"):
            args = (model, part.tokens, part.attention_mask, self.cfg.rollout.temperature or 1.0, with_entropy,
                    bool(self.cfg.algo.entropy_coef), self.cfg.learner.vocab_chunk if fused else 0, part.response_mask)
            if self.share_prompts:  # a group's prompt once, its responses packed after it (rlft.learner.packing)
                return packed_logprobs(*args, cap=self.pack_cap)
            return token_logprobs(*args)

    @torch.no_grad()
    def _frozen_logprobs(self, model, batch: TrainBatch) -> torch.Tensor:
        """[N, L] log-probs of a model that does not change during this step (reference or old policy)."""
        out = torch.zeros_like(batch.rollout_logprobs)
        for rows in self._micro_batches(batch):
            part = batch.select(rows)
            logprobs, _ = self._logprobs(model, part)
            out[rows, : logprobs.shape[1]] = logprobs
        return out

    def _micro_batches(self, batch: TrainBatch) -> Iterator[torch.Tensor]:
        """The row indices of each forward/backward pass; `before_pass` (if set) runs before each."""
        ln = self.cfg.learner
        units = unit_tokens = None
        if self.share_prompts:  # the passes hold whole packed rows, cut by their tokens (what the forward computes)
            first, group, _ = prompt_groups(batch.tokens, batch.attention_mask, batch.response_mask)
            first, group, lengths = first.tolist(), group.tolist(), batch.attention_mask.sum(dim=1).tolist()
            units = pack_units(first, lengths, group, self.pack_cap)
            unit_tokens = unit_lengths(units, first, lengths)
        for rows in micro_batch_rows(batch.attention_mask, ln.micro_batch_size, ln.max_tokens_per_micro_batch,
                                     units, unit_tokens):
            if self.before_pass is not None:
                self.before_pass()
            yield rows

    def reference_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """[N, L] log-probs of the frozen reference on CPU (algo.kl_mode 'reward': charged before advantages;
        hand them back in `batch.ref_logprobs` so the step does not run the reference again)."""
        return self._frozen_logprobs(self.ref_model, batch.to(self.device)).cpu()

    def _reference(self, batch: TrainBatch) -> torch.Tensor | None:
        """The batch's reference log-probs [N, L]: those it carries, else computed now (None: no reference)."""
        if batch.ref_logprobs is not None or self.ref_model is None:
            return batch.ref_logprobs
        return self._frozen_logprobs(self.ref_model, batch)

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One rollout batch: `algo.num_minibatches` optimizer steps; returns averaged statistics."""
        start = time.perf_counter()
        cfg = self.cfg
        batch, skipped = self._rows_to_run(batch.to(self.device))
        old = self._frozen_logprobs(self.model, batch) if cfg.algo.num_minibatches > 1 else None
        ref = self._reference(batch)
        totals: dict[str, float] = {}
        for m in range(cfg.algo.num_minibatches):
            rows = (batch.minibatch == m).nonzero().flatten()
            if len(rows) == 0:
                continue
            if not needs_backward(cfg.optim.name):  # zeroth-order: forward passes only (docs/methods.md#zeroth-order-update)
                stats = zo_update(self, batch.select(rows), old[rows] if old is not None else None,
                                  ref[rows] if ref is not None else None)
                self.scheduler.step()
                self.optimizer_steps += 1
                merge_stats(totals, stats)
                continue
            self.optimizer.zero_grad(set_to_none=True)
            stats = self.accumulate_gradients(
                batch.select(rows), old[rows] if old is not None else None, ref[rows] if ref is not None else None
            )
            if not self._finite(stats):  # a NaN/inf loss or gradient: no weight, optimizer or schedule change
                self.optimizer.zero_grad(set_to_none=True)
                merge_stats(totals, {"nonfinite_steps": 1.0})
                continue
            if self.lora:  # PoLAR's landing field, RefLoRA's preconditioning: on the summed gradient
                lora_before_step(self.model, self.optimizer, self.optimizer_steps)
            stats["grad_norm"] = self._clip_gradients()
            self.neuzip.step(self.optimizer) if self.neuzip else self.optimizer.step()
            self.scheduler.step()
            self.optimizer_steps += 1
            merge_stats(totals, stats)
        return {**self._step_metrics(totals, start), "learner/skipped_rows": float(skipped)}

    def _rows_to_run(self, batch: TrainBatch) -> tuple[TrainBatch, int]:
        """The rows whose loss has a gradient (learner.skip_zero_advantage_rows), and how many others there were."""
        if not self.cfg.learner.skip_zero_advantage_rows:
            return batch, 0
        return drop_zero_gradient_rows(batch, self.cfg.algo)

    def _finite(self, stats: dict[str, float]) -> bool:
        """Whether the mini-batch's loss and every gradient are finite (checked before anything uses them)."""
        if not math.isfinite(stats.get("pg_loss", 0.0)):
            return False
        grads = [p.grad.detach() for p in self.params if p.grad is not None]
        return not grads or bool(torch.isfinite(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))))

    def _step_metrics(self, totals: dict[str, float], start: float) -> dict[str, float]:
        """A batch's statistics summed over its optimizer steps -> per-step means (ratio_max: the largest;
        nonfinite_steps: the count of optimizer steps skipped for a NaN/inf loss or gradient)."""
        steps = self.cfg.algo.num_minibatches
        skipped = totals.pop("nonfinite_steps", 0.0)
        steps_taken = max(1, steps - int(skipped))
        metrics = {f"learner/{k}": (v if k == "ratio_max" else v / steps_taken) for k, v in totals.items()}
        metrics["learner/nonfinite_steps"] = skipped
        metrics["learner/lr"] = self.scheduler.get_last_lr()[0]
        metrics["time/learner_s"] = time.perf_counter() - start
        return metrics

    def accumulate_gradients(
        self, minibatch: TrainBatch, old: torch.Tensor | None = None, ref: torch.Tensor | None = None
    ) -> dict[str, float]:
        """Backward of the mini-batch's loss, micro-batch by micro-batch, into `.grad`; returns statistics.

        `old` / `ref`: [n, L] log-probs of the policy before this step / of the reference; with no
        `old` the current policy is the behaviour policy (ratio 1, the on-policy case).
        """
        totals: dict[str, float] = {}
        for rows in self._micro_batches(minibatch):
            part = minibatch.select(rows)
            width = part.tokens.shape[1]
            logprobs, entropy = self._logprobs(self.train_model, part, with_entropy=True)
            loss, stats = micro_batch_loss(
                logprobs,
                old[rows, :width] if old is not None else logprobs.detach(),
                part.response_mask, part.advantages, part.weights, part.token_weights, self.cfg.algo,
                ref_logprobs=ref[rows, :width] if ref is not None else None,
                entropy=entropy, rollout_logprobs=part.rollout_logprobs,
            )
            self._backward(loss)
            merge_stats(totals, stats)
        return totals

    def _backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def _clip_gradients(self) -> float:
        if self.cfg.optim.grad_clip > 0:
            return float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip))
        return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None])))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Policy weights on CPU under the base model's names (adapters merged); `rollout_weights` is the same
        in the form the rollout workers receive."""
        with self._full_weights():
            return {k: v.detach().to("cpu", copy=True) for k, v in self._policy_weights().items()}

    def rollout_weights(self, dtype: str | None = None) -> FlatWeights:
        """`state_dict()` as one byte buffer, floating-point tensors in `dtype` (the rollout engine's, e.g.
        'bfloat16'; None: as they are): what the driver hands the rollout workers (rlft.models.flat_weights)."""
        with self._full_weights():
            return FlatWeights.pack(self._policy_weights(), getattr(torch, dtype) if dtype else None)

    def _policy_weights(self) -> dict[str, torch.Tensor]:
        return merged_state_dict(self.model) if self.lora else self.model.state_dict()

    def _full_weights(self, recompress: bool = False):
        """Context in which NeuZip-compressed weights are whole tensors (a no-op without compression)."""
        return self.neuzip.materialized(recompress) if self.neuzip else nullcontext()

    def save(self, path: str) -> None:
        """HF-format weights (safetensors, adapters merged) plus optimizer state into folder `path`.

        With adapters, the folder also holds `adapter_state.pt` (what resuming needs) and, for
        plain LoRA, a PEFT adapter in `adapter/`.
        """
        with self._full_weights():
            self._save_weights(path)
        torch.save(
            {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
             "optimizer_steps": self.optimizer_steps},
            Path(path) / "optimizer.pt",
        )

    def _save_weights(self, path: str) -> None:
        if self.lora:
            save_merged(self.model, None, path)
            trainable = {n: p.detach().cpu() for n, p in self.model.named_parameters() if p.requires_grad}
            torch.save(trainable, Path(path) / "adapter_state.pt")
            if self.cfg.lora.kind == "lora":
                export_peft_adapter(
                    self.model, Path(path) / "adapter", base_model_name_or_path=resolve_model_path(self.cfg.model.path)
                )
        else:
            self.model.save_pretrained(path, safe_serialization=True)

    def load(self, path: str) -> None:
        """Weights (or adapters) and optimizer state from a folder written by `save`."""
        if self.lora:
            trainable = torch.load(Path(path) / "adapter_state.pt", map_location=self.device)
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, value in trainable.items():
                    params[name].copy_(value)
        else:
            with self._full_weights(recompress=True):
                load_model_weights(self.model, path)
        state = torch.load(Path(path) / "optimizer.pt", map_location=self.device, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.optimizer_steps = state["optimizer_steps"]

    def peak_memory_bytes(self) -> int:
        """Peak resident memory of this process (CPU) or peak CUDA allocation (GPU)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
