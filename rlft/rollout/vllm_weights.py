"""Learner weights -> vLLM: names vLLM's loader takes, what changed since the last sync, buckets, and the
in-process weight-transfer backend rlft registers with vLLM.

vLLM 0.32 updates weights in place through its RL weight-transfer API (`start_weight_update`,
`update_weights` per bucket, `finish_weight_update`; vllm/entrypoints/rl/). A backend receives each
bucket and loads it with vLLM's layerwise reload, which rebuilds each layer from checkpoint-format
tensors and copies the processed result into the live storage. vLLM ships NCCL and CUDA-IPC backends;
"rlft_inline" (rlft.rollout.vllm_inline_backend) hands the tensors over by reference, so one process (the
rollout worker, with vLLM in-process) or vLLM's engine process (tensors serialised by collective_rpc) loads
them on CPU or GPU.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

INLINE_BACKEND = "rlft_inline"
BUCKET_BYTES = 256 * 2**20
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "base_model.model.")  # DDP/DeepSpeed, torch.compile, PEFT


def vllm_weights(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs that vLLM's model.load_weights takes from the learner's state dict: wrapper
    prefixes stripped, adapter tensors dropped. A tied lm_head.weight stays: vLLM's CPU build keeps its own
    copy of the head, and a reload that omits it restores the old head (measured on vLLM 0.32)."""
    out = []
    for name, tensor in state.items():
        for prefix in _WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name = name[len(prefix):]
        if "lora_" in name:
            continue
        out.append((name, tensor))
    return out


def weight_buckets(weights: list[tuple[str, torch.Tensor]], limit: int = BUCKET_BYTES) -> list[list]:
    """Consecutive runs of `weights` of at most `limit` bytes each (a larger tensor travels alone)."""
    buckets, current, size = [], [], 0
    for name, tensor in weights:
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > limit:
            buckets.append(current)
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    return buckets + ([current] if current else [])


def load_unit(name: str) -> str:
    """The module whose tensors vLLM loads together: the parent of the tensor's module.

    vLLM fuses sibling projections into one layer (q/k/v -> qkv_proj, gate/up -> gate_up_proj), and its
    layerwise reload rebuilds a layer only from what arrives: sending q without k would leave k empty.
    Everything under one parent module travels together, so a fused layer always gets all its parts."""
    return name.rsplit(".", 2)[0]


def _fingerprint(tensor: torch.Tensor) -> bytes:
    """A digest of the tensor's bytes (exact change detection without keeping a copy of the weights)."""
    data = tensor.detach().contiguous().cpu().view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).digest() + str((tensor.dtype, tuple(tensor.shape))).encode()


@dataclass
class ChangeTracker:
    """Remembers a digest of every tensor sent, so a sync sends only the load units that changed."""

    digests: dict[str, bytes] = field(default_factory=dict)

    def changed(self, weights: list[tuple[str, torch.Tensor]]) -> list[tuple[str, torch.Tensor]]:
        """The pairs of every load unit in which at least one tensor differs from the last call."""
        fresh = {name: _fingerprint(tensor) for name, tensor in weights}
        dirty_units = {load_unit(n) for n, d in fresh.items() if self.digests.get(n) != d}
        self.digests = fresh
        return [(n, t) for n, t in weights if load_unit(n) in dirty_units]


def register_inline_backend() -> None:
    """Register the "rlft_inline" weight-transfer backend with vLLM, lazily (its module loads when vLLM creates
    the engine). Called by the rollout engine and, as rlft's `vllm.general_plugins` entry point, in every
    process vLLM starts; so it imports nothing of vLLM beyond the factory and may run many times."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if INLINE_BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(INLINE_BACKEND, "rlft.rollout.vllm_inline_backend",
                                                    "InlineWeightTransferEngine")
