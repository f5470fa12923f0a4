"""NeuZip (Hao, Cao, Mou, arXiv 2410.20650; docs/methods.md#neuzip): learner weights held losslessly compressed.

Each linear and embedding weight (bf16 or fp32) is split into its raw sign+mantissa bits (1 byte per
bf16 weight, 3 per fp32) and its 8 exponent bits, which take a few distinct values with skewed
frequencies and are entropy-coded with an asymmetric numeral system (`constriction`'s AnsCoder under
the weight's own exponent histogram). The parameter itself keeps a 0-byte stand-in of its shape (a
broadcast scalar); the full weight exists only

- inside its module's forward: a pre-hook decompresses it, the module reads it, a post-hook drops it;
- inside the backward of that module: saved-tensor hooks store a token instead of the weight and
  decompress again when autograd unpacks it;
- inside the optimizer step of that one tensor (`NeuZip.step`: decompress, step, recompress).

The bits are reproduced exactly, and the same kernels run on them, so a training step equals the
uncompressed step bit for bit. The rollout side gets ordinary weights (`materialized`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from torch import nn

from rlft.errors import ConfigError

_LAYOUT = {torch.bfloat16: (torch.int16, 16, 7), torch.float32: (torch.int32, 32, 23)}  # int view, bits, mantissa


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ConfigError("learner.weight_compression=neuzip needs the constriction package: "
                          "pip install 'rlft[neuzip]', or set learner.weight_compression=none") from None
    return constriction


class CompressedTensor:
    """One weight as raw sign+mantissa bytes plus an ANS-coded exponent stream; exact round trip."""

    def __init__(self, t: torch.Tensor):
        if t.dtype not in _LAYOUT:
            raise ConfigError(f"learner.weight_compression=neuzip compresses bfloat16 and float32 weights, not {t.dtype}: "
                              "set model.dtype to bfloat16 or float32")
        self.shape, self.dtype, self.device = t.shape, t.dtype, t.device
        self.numel = t.numel()
        self.store(t)

    def store(self, t: torch.Tensor) -> None:
        """(Re)compress `t` (same shape and dtype) into this object."""
        int_dtype, bits, mantissa = _LAYOUT[self.dtype]
        x = t.detach().reshape(-1).cpu().view(int_dtype).numpy().view(np.uint16 if bits == 16 else np.uint32)
        exponent = ((x >> mantissa) & 0xFF).astype(np.int32)
        sign_mantissa = ((x >> (bits - 1)) << mantissa) | (x & ((1 << mantissa) - 1))  # sign just above the mantissa
        if bits == 16:
            self.raw = sign_mantissa.astype(np.uint8)
        else:  # 24 bits in 3 bytes, little end first
            self.raw = np.stack([(sign_mantissa >> s).astype(np.uint8) for s in (0, 8, 16)], axis=1)
        self.symbols, codes, counts = np.unique(exponent, return_inverse=True, return_counts=True)
        self.probabilities = counts / counts.sum()
        coder = _constriction().stream.stack.AnsCoder()
        coder.encode_reverse(codes.astype(np.int32).reshape(-1), self._model())
        self.stream = coder.get_compressed()

    def _model(self):
        return _constriction().stream.model.Categorical(self.probabilities, perfect=False)

    def decompress(self) -> torch.Tensor:
        """The original tensor, bit for bit, on its device."""
        int_dtype, bits, mantissa = _LAYOUT[self.dtype]
        codes = _constriction().stream.stack.AnsCoder(self.stream).decode(self._model(), self.numel)
        wide = np.uint16 if bits == 16 else np.uint32
        exponent = self.symbols.astype(wide)[codes]
        if bits == 16:
            sign_mantissa = self.raw.astype(wide)
        else:
            sign_mantissa = (self.raw[:, 0].astype(wide) | (self.raw[:, 1].astype(wide) << 8)
                             | (self.raw[:, 2].astype(wide) << 16))
        x = ((sign_mantissa >> mantissa) << (bits - 1)) | (exponent << mantissa) | (sign_mantissa & ((1 << mantissa) - 1))
        out = torch.from_numpy(x.view(np.int16 if bits == 16 else np.int32)).view(self.dtype).reshape(self.shape)
        return out.to(self.device)

    @property
    def nbytes(self) -> int:
        """Bytes held: raw bits, exponent stream, symbol table and probabilities."""
        return self.raw.nbytes + self.stream.nbytes + self.symbols.nbytes + self.probabilities.nbytes


class _Decompress(torch.autograd.Function):
    """The weight from its compressed store; the gradient flows to the (stand-in) parameter unchanged."""

    @staticmethod
    def forward(ctx, param: torch.Tensor, store: CompressedTensor) -> torch.Tensor:  # type: ignore[override]
        return store.decompress()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def _stand_in(t: torch.Tensor) -> torch.Tensor:
    """A tensor of t's shape and dtype that holds one element (a broadcast zero)."""
    return torch.zeros((), dtype=t.dtype, device=t.device).expand(t.shape)


class NeuZip:
    """Compresses the weights of every nn.Linear and nn.Embedding in `model` and hooks their modules."""

    def __init__(self, model: nn.Module, keep: list[nn.Module] = ()):
        """`keep`: modules whose weight stays uncompressed (read outside their forward), with any tied to it."""
        self.stores: dict[nn.Parameter, CompressedTensor] = {}
        self.handles = []
        kept = {id(m.weight) for m in keep}
        for module in model.modules():
            if not isinstance(module, (nn.Linear, nn.Embedding)) or id(module.weight) in kept:
                continue
            p = module.weight
            if p not in self.stores:  # a tied weight (embedding and LM head) is one store
                self.stores[p] = CompressedTensor(p.data)
                p.data = _stand_in(p.data)
            self.handles.append(module.register_forward_pre_hook(self._before))
            self.handles.append(module.register_forward_hook(self._after))
        self._open: list[tuple[nn.Module, nn.Parameter, object]] = []

    def _before(self, module: nn.Module, args) -> None:
        param = module._parameters["weight"]
        store = self.stores[param]
        weight = _Decompress.apply(param, store) if param.requires_grad and torch.is_grad_enabled() \
            else store.decompress()
        storage = weight.untyped_storage().data_ptr()

        def pack(t: torch.Tensor):
            if t.untyped_storage().data_ptr() == storage:  # the weight or a view of it: keep a token instead
                return store, t.shape, t.stride(), t.storage_offset()
            return t

        def unpack(saved):
            if isinstance(saved, tuple):
                s, shape, stride, offset = saved
                return s.decompress().as_strided(shape, stride, offset)
            return saved

        hooks = torch.autograd.graph.saved_tensors_hooks(pack, unpack)
        hooks.__enter__()
        module._parameters["weight"] = weight  # type: ignore[assignment]
        self._open.append((module, param, hooks))

    def _after(self, module: nn.Module, args, output) -> None:
        opened, param, hooks = self._open.pop()
        assert opened is module, "NeuZip hooks closed out of order"
        module._parameters["weight"] = param
        hooks.__exit__(None, None, None)  # type: ignore[attr-defined]

    @property
    def compressed_bytes(self) -> int:
        return sum(s.nbytes for s in self.stores.values())

    @property
    def raw_bytes(self) -> int:
        return sum(s.numel * s.dtype.itemsize for s in self.stores.values())

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """optimizer.step(), one compressed weight at a time (decompress, step, recompress), the rest together.

        Hiding the other gradients makes the optimizer skip those tensors; each tensor's update is
        per-element and independent of the others, so the result equals one step over all of them.
        """
        params = [p for g in optimizer.param_groups for p in g["params"]]
        grads = {p: p.grad for p in params}
        for p in params:
            p.grad = None
        try:
            for p in params:
                if p not in self.stores:
                    p.grad = grads[p]
            optimizer.step()
            for p in params:
                p.grad = None
            for p, store in self.stores.items():
                if grads.get(p) is None:
                    continue
                p.grad, p.data = grads[p], store.decompress()
                optimizer.step()
                store.store(p.data)
                p.grad, p.data = None, _stand_in(p.data)
        finally:
            for p in params:
                p.grad = grads[p]

    @contextmanager
    def materialized(self, recompress: bool = False) -> Iterator[None]:
        """Inside, every compressed parameter holds its full weight (to read, or with `recompress` to write)."""
        for p, store in self.stores.items():
            p.data = store.decompress()
        try:
            yield
        finally:
            for p, store in self.stores.items():
                if recompress:
                    store.store(p.data)
                p.data = _stand_in(p.data)
