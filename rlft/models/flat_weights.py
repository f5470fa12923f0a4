"""A state dict as one byte buffer: the form in which the learner hands its weights to rollout workers.

Ray stores a numpy array in its object store without copying it element by element (pickle protocol 5
out-of-band buffers) and maps it into the reader's process, but pickles a dict of torch tensors tensor by
tensor. On the 2-core test machine, the embedded model's 51 tensors (4 MB) took 21-25 ms from the learner's
call to the object store and 18 ms into a rollout worker as a dict, 6 ms and 6.5 ms as one buffer (ad hoc,
two Ray actors; a sync-mode step of the default run spent ~33 ms in weight sync).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch

ALIGN = 64  # bytes; every tensor starts at a multiple, so viewing its bytes as its dtype is always allowed


@dataclass
class FlatWeights:
    """`entries`: (name, dtype, shape, byte offset) in the state dict's order; `data`: every tensor's bytes."""

    entries: list[tuple[str, torch.dtype, tuple[int, ...], int]]
    data: np.ndarray  # uint8

    @staticmethod
    def pack(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> "FlatWeights":
        """Copy `state`'s tensors (any device, any dtype) into one CPU buffer; `dtype`: cast floating-point
        tensors to it (the reader's dtype: a bf16 rollout of an fp32 learner gets half the bytes)."""
        entries, offset = [], 0
        for name, tensor in state.items():
            kind = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            entries.append((name, kind, tuple(tensor.shape), offset))
            offset += -(-tensor.numel() * kind.itemsize // ALIGN) * ALIGN
        data = torch.empty(offset, dtype=torch.uint8)
        for (name, kind, shape, start), tensor in zip(entries, state.values()):
            if tensor.numel():
                data[start:start + tensor.numel() * kind.itemsize].view(kind).view(shape).copy_(tensor.detach())
        return FlatWeights(entries, data.numpy())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that view the buffer (no copy: `load_state_dict` copies them into a model)."""
        with warnings.catch_warnings():  # Ray hands out its stored arrays read-only; nothing here writes to them
            warnings.simplefilter("ignore", UserWarning)
            data = torch.from_numpy(self.data)
        out = {}
        for name, dtype, shape, start in self.entries:
            out[name] = data[start:start + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
        return out

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)
