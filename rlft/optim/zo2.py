"""ZO2 offloading (L. Wang et al., arXiv 2503.12668; docs/methods.md#zeroth-order-update): `optim.zo_offload=true`.

The transformer blocks live on the CPU; embeddings, rotary tables, the final norm and the LM head
stay on the device. A step walks the blocks once, on three streams, in ticks (`block_schedule`):

    tick t:   upload block t   |   compute block t-1   |   offload block t-2

where "compute" first applies the previous step's deferred update to the block (the update needs
the step's projected gradients, known only after the last block), then runs every perturbed
forward (θ ± εz_k, k = 1..K) through it, so each block crosses the bus once per step. The device
parts take their update at the end of the step. Between steps the blocks on the CPU are one
update behind; `flush()` applies it (before saving, syncing weights or reading them).

Not run on a GPU here: on CPU (device 'cpu') the same schedule and arithmetic run with no-op
copies and no streams, which is what the tests pin; the CUDA streams and events are the only
GPU-specific part.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn

from rlft.optim.zo import ZerothOrder, perturbed

Event = tuple[str, int]  # (operation, block): ('upload' | 'compute' | 'offload', block index)


def block_schedule(num_blocks: int) -> list[list[Event]]:
    """Ticks of the pipeline: at tick t block t uploads, block t−1 computes, block t−2 offloads."""
    ticks = []
    for t in range(num_blocks + 2):
        tick = [("upload", t)] if t < num_blocks else []
        tick += [("compute", t - 1)] if 0 <= t - 1 < num_blocks else []
        tick += [("offload", t - 2)] if 0 <= t - 2 < num_blocks else []
        ticks.append(tick)
    return ticks


class ZO2Offload:
    """Runs `ZerothOrder` steps of a decoder-only HF model with its blocks streamed from the CPU."""

    def __init__(self, model: nn.Module, optimizer: ZerothOrder, device: torch.device):
        self.model, self.optimizer, self.device = model, optimizer, torch.device(device)
        optimizer.rng_device = self.device  # z drawn on the device, whether its tensor sits there or on the CPU
        decoder = model.get_decoder()
        self.blocks = list(decoder.layers)
        self.resident = [decoder.embed_tokens, decoder.rotary_emb, decoder.norm, model.get_output_embeddings()]
        for m in self.resident:
            m.to(self.device)
        cuda = self.device.type == "cuda"
        for block in self.blocks:
            block.to("cpu")
            if cuda:  # pinned pages: the host-to-device copies can run asynchronously on the side stream
                for p in block.parameters():
                    p.data = p.data.pin_memory()
        self.streams = {name: torch.cuda.Stream(self.device) for name in ("upload", "offload")} if cuda else {}
        self.pending: dict | None = None  # the previous step's update, not yet applied to the blocks
        self.events: list[Event] = []  # every operation issued, in order (the tests read it)

    def _stream(self, name: str):
        return torch.cuda.stream(self.streams[name]) if name in self.streams else nullcontext()

    def _move(self, block: nn.Module, device: torch.device, after: torch.cuda.Event | None) -> torch.cuda.Event | None:
        """Copy the block's tensors to `device` (asynchronously on CUDA, after `after`); returns the copy's event."""
        if self.device.type != "cuda":  # CPU: nothing moves; the schedule and arithmetic are the same
            return None
        stream = torch.cuda.current_stream(self.device)
        if after is not None:
            stream.wait_event(after)
        compute = torch.cuda.default_stream(self.device)
        for t in list(block.parameters()) + list(block.buffers()):
            if device.type == "cpu":  # into pinned pages, so the copy is truly asynchronous
                moved = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                moved.copy_(t.data, non_blocking=True)
                t.data.record_stream(stream)  # the allocator must not hand these pages out before the copy
            else:
                moved = t.data.to(device, non_blocking=True)
                moved.record_stream(compute)  # allocated on this stream, used on the compute stream
            t.data = moved
        event = torch.cuda.Event()
        event.record(stream)
        return event

    def _update(self, modules: list[nn.Module], update: dict | None) -> None:
        for m in modules:
            for p in m.parameters():
                if update is not None and p in self.optimizer.index:
                    self.optimizer.apply_update(p, update)

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, loss_of_hidden: Callable[[torch.Tensor], float]) -> dict[str, float]:
        """One optimizer step; `loss_of_hidden(h)` is the loss from the last block's output h [N, L, H]
        (it runs the final norm and head, which `perturbed` shows it at the step's current perturbation)."""
        opt, group = self.optimizer, self.optimizer.param_groups[0]
        seeds, eps = opt.step_seeds(), group["eps"]
        shifts = [opt.perturbation(seed, sign * eps) for seed in seeds for sign in (1, -1)]
        tokens = tokens.to(self.device)
        positions = torch.arange(tokens.shape[1], device=self.device)[None].expand_as(tokens)
        embed, rotary = self.resident[0], self.resident[1]
        hidden = []
        for shift in shifts:
            with perturbed(embed, opt.index, shift):
                hidden.append(embed(tokens))
        rope = rotary(hidden[0], positions)
        uploaded: dict[int, torch.cuda.Event | None] = {}
        computed: dict[int, torch.cuda.Event | None] = {}
        for tick in block_schedule(len(self.blocks)):
            for op, i in tick:
                self.events.append((op, i))
                block = self.blocks[i]
                if op == "upload":
                    with self._stream("upload"):
                        uploaded[i] = self._move(block, self.device, None)
                elif op == "compute":
                    if uploaded[i] is not None:
                        torch.cuda.current_stream(self.device).wait_event(uploaded[i])
                    self._update([block], self.pending)
                    for j, shift in enumerate(shifts):
                        with perturbed(block, opt.index, shift):
                            out = block(hidden[j], attention_mask=None, position_ids=positions,
                                        position_embeddings=rope)
                        hidden[j] = out[0] if isinstance(out, tuple) else out
                    if self.device.type == "cuda":
                        computed[i] = torch.cuda.Event()
                        computed[i].record()
                else:
                    with self._stream("offload"):
                        self._move(block, torch.device("cpu"), computed.get(i))
        losses = []
        head_parts = [self.resident[2], self.resident[3]]
        for j, shift in enumerate(shifts):
            with perturbed(nn.ModuleList(head_parts), opt.index, shift, whole=[self.resident[3]]):
                losses.append(float(loss_of_hidden(hidden[j])))
        plus, minus = losses[0::2], losses[1::2]
        update = {"seeds": seeds, "grads": [(a - b) / (2 * eps) for a, b in zip(plus, minus)],
                  "lr": group["lr"], "weight_decay": group["weight_decay"]}
        finite = all(map(math.isfinite, update["grads"]))  # a NaN/inf loss: this step changes no weight
        if finite:
            self._update([embed, *head_parts] if not _tied(self.model) else [embed, self.resident[2]], update)
        self.pending = update if finite else None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        opt._opt_called = True  # type: ignore[attr-defined]  # a step taken: the LR scheduler checks this flag
        return opt.finish_step(plus, minus)

    @torch.no_grad()
    def flush(self) -> None:
        """Apply the deferred update to the blocks on the CPU: afterwards the weights are the current ones."""
        self._update(self.blocks, self.pending)
        self.pending = None


def _tied(model: nn.Module) -> bool:
    """Whether the LM head is the input embedding (one tensor: update it once)."""
    return model.get_output_embeddings().weight is model.get_input_embeddings().weight
