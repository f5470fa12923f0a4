"""The policy learner on one data-parallel rank of DeepSpeed ZeRO (`learner.backend=deepspeed`).

The loss weights carry the mini-batch's global normalisers (rlft.pipeline.batch), so a rank's
share of the loss is simply the loss of its rows; the gradient every rank ends up with is the
single-process learner's. Ranks run in lockstep: every rank gets the same number of rows.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import deepspeed
import deepspeed.ops
import torch
import torch.distributed as dist

from rlft.learner.learner import Learner, merge_stats
from rlft.models.flat_weights import FlatWeights
from rlft.lora import export_peft_adapter, save_merged
from rlft.learner.micro_batches import micro_batch_rows
from rlft.models.loading import resolve_model_path
from rlft.learner.types import TrainBatch

CHECKPOINT_SUBDIR = "deepspeed"  # optimizer, scheduler and partitioned fp32 state, beside the HF weights
CHECKPOINT_TAG = "state"


def init_distributed(rank: int, world_size: int, master_addr: str, master_port: int, cuda: bool) -> None:
    """Join the process group of the learner ranks (NCCL on GPUs, gloo on CPU)."""
    os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK="0")  # each actor sees only its own GPU
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # rather than its guess, when torch sees no GPU
        # DeepSpeed's CPU all-reduce over shared memory is a C++ op compiled on first use (half a
        # minute, and a compile killed half-way leaves a lock that hangs every later start); gloo
        # does the same reductions. The probe result is a module-level dict DeepSpeed reads from.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed("nccl" if cuda else "gloo", rank=rank, world_size=world_size)


class DeepSpeedLearner(Learner):
    """`Learner` whose model and optimizer are wrapped in a DeepSpeed engine; call on every rank alike."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        config = {
            "train_micro_batch_size_per_gpu": cfg.learner.micro_batch_size,
            "gradient_accumulation_steps": 1,
            # mini-batches hold as many micro-batches as the rollout left rows: each engine.step() is a boundary
            "managed_gradient_accumulation": False,
            "gradient_clipping": cfg.optim.grad_clip,
            "zero_optimization": {"stage": cfg.learner.zero_stage},
            "zero_allow_untested_optimizer": True,  # our client optimizers (AdamW, 4-bit AdamW)
            "bf16": {"enabled": False},
            "fp16": {"enabled": False},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, _, _, _ = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, lr_scheduler=self.scheduler, config=config
        )
        # the training forward goes through the engine: it prepares ZeRO-3's gradient reduction
        # (through the bare model every gradient comes out 0)
        self.train_model = self.engine
        if cfg.learner.zero_stage == 3:  # ZeRO-3 keeps a slice of the output embedding outside the forward
            self.fused_logprobs = False
        # every rank must run the same forwards (ZeRO-3 gathers parameters in each): a rank whose rows repeat a
        # prompt would run two where another runs one, and the collectives would wait for ever
        self.share_prompts = False

    def _micro_batches(self, batch: TrainBatch) -> list[torch.Tensor]:
        # every rank must run as many forwards and backwards as the others (ZeRO's collectives): rows only
        return micro_batch_rows(batch.attention_mask, self.cfg.learner.micro_batch_size, None)

    def _full_parameters(self):
        """Every parameter whole on every rank for the block (ZeRO-3 partitions them; collective)."""
        if self.cfg.learner.zero_stage == 3:
            return deepspeed.zero.GatheredParameters(list(self.model.parameters()))
        return contextlib.nullcontext()

    def _shard(self, batch: TrainBatch, rows: torch.Tensor) -> TrainBatch:
        """This rank's share of `rows`, padded to ceil(len(rows) / world_size) rows.

        Padding rows repeat the mini-batch's first row with zero loss weights: they add nothing to
        the loss or the statistics, and keep every rank at the same number of forwards and backwards.
        """
        per_rank = -(-len(rows) // self.world_size)
        mine = rows[self.rank * per_rank : (self.rank + 1) * per_rank]
        padding = per_rank - len(mine)
        part = batch.select(torch.cat([mine, rows[:1].repeat(padding)]))
        if padding:
            part.weights[-padding:] = 0.0
            part.token_weights[-padding:] = 0.0
        return part

    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One rollout batch: `algo.num_minibatches` optimizer steps over all ranks; returns global statistics."""
        start = time.perf_counter()
        cfg = self.cfg
        # the batch is the same on every rank, so every rank drops the same rows
        batch, skipped = self._rows_to_run(batch.to(self.device))
        shards = []
        for m in range(cfg.algo.num_minibatches):
            rows = (batch.minibatch == m).nonzero().flatten()
            if len(rows):  # the batch is the same on every rank, so every rank skips the same ones
                shards.append(self._shard(batch, rows))
        # the old policy and the reference, before the first update (as in Learner.train_step)
        old = [self._frozen_logprobs(self.model, s) for s in shards] if cfg.algo.num_minibatches > 1 else None
        ref = [self._reference(s) for s in shards] if self.ref_model is not None else None
        totals: dict[str, float] = {}
        for i, shard in enumerate(shards):
            stats = self._global(self.accumulate_gradients(
                shard, old[i] if old is not None else None, ref[i] if ref is not None else None
            ))
            self.engine.step()  # gradient clipping, optimizer and LR schedule
            stats["grad_norm"] = float(self.engine.get_global_grad_norm())
            self.optimizer_steps += 1
            merge_stats(totals, stats)
        return {**self._step_metrics(totals, start), "learner/skipped_rows": float(skipped)}

    def _backward(self, loss: torch.Tensor) -> None:
        # DeepSpeed averages gradients over ranks; the shares must add up, so undo the average
        self.engine.backward(loss * self.world_size, scale_wrt_gas=False)

    def _global(self, stats: dict[str, float]) -> dict[str, float]:
        """Statistics of the whole mini-batch: shares summed over ranks, `ratio_max` the largest."""
        keys = sorted(stats)
        values = torch.tensor([stats[k] for k in keys], dtype=torch.float64, device=self.device)
        largest = values.clone()
        dist.all_reduce(values)
        dist.all_reduce(largest, op=dist.ReduceOp.MAX)
        return {k: float(largest[i] if k == "ratio_max" else values[i]) for i, k in enumerate(keys)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Rank 0: the whole policy on CPU under the base model's names; other ranks: {} (collective)."""
        with self._full_parameters():
            return super().state_dict() if self.rank == 0 else {}

    def rollout_weights(self, dtype: str | None = None) -> FlatWeights:
        """Rank 0: `state_dict()` as one buffer (rlft.models.flat_weights); other ranks: an empty one (collective)."""
        with self._full_parameters():
            return super().rollout_weights(dtype) if self.rank == 0 else FlatWeights.pack({})

    def save(self, path: str) -> None:
        """Rank 0 writes HF-format weights (safetensors, adapters merged) into `path`; every rank writes its
        DeepSpeed partition (optimizer, scheduler, fp32 master weights) under `path`/deepspeed. Collective."""
        with self._full_parameters():
            if self.rank == 0:
                Path(path).mkdir(parents=True, exist_ok=True)
                if self.lora:
                    save_merged(self.model, None, path)
                    export_peft_adapter(self.model, Path(path) / "adapter",
                                        base_model_name_or_path=resolve_model_path(self.cfg.model.path))
                else:
                    self.model.save_pretrained(path, safe_serialization=True)
        self.engine.save_checkpoint(
            str(Path(path) / CHECKPOINT_SUBDIR), tag=CHECKPOINT_TAG,
            client_state={"optimizer_steps": self.optimizer_steps}, save_latest=False,
        )

    def load(self, path: str) -> None:
        """Weights, optimizer and scheduler state from a folder written by `save` (collective)."""
        _, client_state = self.engine.load_checkpoint(str(Path(path) / CHECKPOINT_SUBDIR), tag=CHECKPOINT_TAG)
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint in {Path(path) / CHECKPOINT_SUBDIR}")
        self.optimizer_steps = client_state["optimizer_steps"]
