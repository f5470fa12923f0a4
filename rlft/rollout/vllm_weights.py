"""Learner weights -> vLLM: names vLLM's loader takes, what changed since the last sync, buckets, and the
in-process weight-transfer backend rlft registers with vLLM.

vLLM 0.32 updates weights in place through its RL weight-transfer API (`start_weight_update`,
`update_weights` per bucket, `finish_weight_update`; vllm/entrypoints/rl/). A backend receives each
bucket and loads it with vLLM's layerwise reload, which rebuilds each layer from checkpoint-format
tensors and copies the processed result into the live storage. vLLM ships NCCL and CUDA-IPC backends;
"rlft_inline" (below) hands the tensors over by reference, so one process (the rollout worker, with
vLLM in-process) or vLLM's engine process (tensors pickled by collective_rpc) loads them on CPU or GPU.
"""

from __future__ import annotations

import hashlib
import logging
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
    """Register the "rlft_inline" weight-transfer backend with vLLM (once per process; vLLM's engine
    process finds it through rlft's `vllm.general_plugins` entry point)."""
    from vllm.distributed.weight_transfer.base import (WeightTransferEngine, WeightTransferInitInfo,
                                                       WeightTransferUpdateInfo)
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory
    from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

    if INLINE_BACKEND in WeightTransferEngineFactory._registry:
        return

    @dataclass
    class InlineInitInfo(WeightTransferInitInfo):
        pass

    @dataclass
    class InlineUpdateInfo(WeightTransferUpdateInfo):
        names: list[str]
        tensors: list[torch.Tensor]

    class InlineWeightTransferEngine(WeightTransferEngine[InlineInitInfo, InlineUpdateInfo]):
        """Checkpoint-format tensors handed over as they are; layerwise reload around each update."""

        init_info_cls, update_info_cls = InlineInitInfo, InlineUpdateInfo

        def init_transfer_engine(self, init_info: InlineInitInfo) -> None:
            pass  # nothing to connect: the tensors come with each update

        def start_weight_update(self) -> None:
            initialize_layerwise_reload(self.model)

        def receive_weights(self, update_info: InlineUpdateInfo) -> None:
            self.model.load_weights(list(zip(update_info.names, update_info.tensors)))

        def update_weights(self, update_info: dict) -> None:
            # the base class synchronizes an accelerator; CPU tensors are loaded synchronously
            self.receive_weights(self.parse_update_info(update_info))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        def finish_weight_update(self) -> None:
            # layers that received nothing (unchanged) get their old tensors back, each with a vLLM warning
            reload_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
            level = reload_log.level
            reload_log.setLevel(logging.ERROR)
            try:
                finalize_layerwise_reload(self.model, self.model_config)
            finally:
                reload_log.setLevel(level)

        def shutdown(self) -> None:
            pass

    WeightTransferEngineFactory.register_engine(INLINE_BACKEND, InlineWeightTransferEngine)

