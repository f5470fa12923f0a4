"""rlft's vLLM weight-transfer backend "rlft_inline": checkpoint-format tensors handed over as they are.

vLLM creates it in each of its workers (rlft.rollout.vllm_weights.register_inline_backend names this module);
`update_weights` gets {"names": [...], "tensors": [...]} per bucket, and vLLM's layerwise reload
(vllm/model_executor/model_loader/reload/) rebuilds each layer from them and copies the processed result
into the live storage, as its NCCL and IPC backends do after their transfer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo
from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload


@dataclass
class InlineInitInfo(WeightTransferInitInfo):
    pass


@dataclass
class InlineUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    tensors: list[torch.Tensor] | None = None  # in-process vLLM: the learner's tensors themselves
    safetensors: bytes | None = None  # vLLM in its own process: the bucket serialised (collective_rpc's msgpack
    # carries bytes, while tensors nested in a dict arrive as lists)


class InlineWeightTransferEngine(WeightTransferEngine[InlineInitInfo, InlineUpdateInfo]):
    """Layerwise reload around each update; the tensors come with it."""

    init_info_cls, update_info_cls = InlineInitInfo, InlineUpdateInfo

    def init_transfer_engine(self, init_info: InlineInitInfo) -> None:
        pass  # nothing to connect

    def start_weight_update(self) -> None:
        initialize_layerwise_reload(self.model)

    def receive_weights(self, update_info: InlineUpdateInfo) -> None:
        tensors = update_info.tensors
        if update_info.safetensors is not None:
            from safetensors.torch import load

            loaded = load(update_info.safetensors)
            tensors = [loaded[name] for name in update_info.names]
        self.model.load_weights(list(zip(update_info.names, tensors)))

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
