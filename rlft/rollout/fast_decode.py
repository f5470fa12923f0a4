"""The built-in engine's decode step for Llama-family models on a CPU (`rollout.fast_decode`).

A decode step feeds one token per running sample: a handful of rows through every weight of the model.
On a CPU that step is bound by reading the weights, and transformers' modules add a few hundred small ops
and module calls per step on top (for a 31M-parameter model at 4-16 rows, about half of a bf16 step). This
step computes the same function from the same parameters with fewer, larger kernels:

- q/k/v and gate/up projections each fused into one matrix, and pre-packed for oneDNN's GEMM (its blocked
  layout reads at close to memory bandwidth at few rows, where plain `F.linear` reaches ~60-75 % of it): bf16
  weights always, fp32 weights of 1 MiB and more;
- the residual adds inside the output and down projections' packed GEMMs (oneDNN's binary post-op);
- RMSNorm as one fused op, the rotary angles once per step (from the model's own rotary module, so every
  rope scaling it knows applies) applied to q and k at once, attention through the paged cache like
  transformers' path.

The packed copies are rebuilt when a parameter changes (their in-place version counters move: a weight
load), so they cost one extra copy of the decoder's weights in the rollout worker. Prefill stays on
transformers' forward. Model types outside `MODEL_TYPES`, other module layouts and models on a GPU decode
through transformers' forward too; `unsupported(model)` says why. docs/methods.md#fast-decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlft.rollout.kv_cache import PagedKVCache

MODEL_TYPES = ("llama", "qwen2", "mistral")  # pre-norm RMSNorm, rotary, grouped-query attention, SiLU-gated MLP


def unsupported(model: torch.nn.Module) -> str | None:
    """Why `FastDecoder` cannot run `model` (None: it can)."""
    config = model.config
    if config.model_type not in MODEL_TYPES:
        return f"model type {config.model_type!r} (the fast decode step knows {', '.join(MODEL_TYPES)})"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not layers or not all(hasattr(inner, name) for name in ("norm", "rotary_emb")) or not _layout_of(layers[0]):
        return "the model's modules are not transformers' Llama layout (model.layers[i].self_attn.q_proj, ...)"
    if next(model.parameters()).device.type != "cpu":
        return "the model is not on a CPU"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r}"
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or [])
    if sliding or (config.model_type == "mistral" and getattr(config, "sliding_window", None)):
        return "sliding-window attention"
    if getattr(config, "mlp_bias", False):
        return "MLP biases"
    if getattr(config, "pretraining_tp", 1) != 1:
        return "pretraining_tp > 1"
    return None


def _layout_of(layer: torch.nn.Module) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    names = [(attn, ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")),
             (mlp, ("gate_proj", "up_proj", "down_proj")),
             (layer, ("input_layernorm", "post_attention_layernorm"))]
    return all(part is not None and all(hasattr(part, n) for n in attrs) for part, attrs in names)


# oneDNN's packed fp32 GEMM reads a large weight faster than F.linear at few rows, but costs ~15 us more a call:
# a weight that stays in cache (the embedded 1.07M model's) is faster through F.linear (scripts/bench_fast_decode.py)
PACK_FP32_MIN_BYTES = 1 << 20


def _packable(weight: torch.Tensor) -> bool:
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return False
    if weight.dtype == torch.float32:
        return weight.numel() * 4 >= PACK_FP32_MIN_BYTES
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


class _Linear:
    """y = x W^T + b with W pre-packed for oneDNN (any row count); plain F.linear where oneDNN is missing and
    for small fp32 weights."""

    __slots__ = ("weight", "bias", "packed")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        self.weight, self.bias = weight.contiguous(), bias
        self.packed = _packable(self.weight)
        if self.packed:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(self.weight, 16)

    def __call__(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x W^T + b, plus `residual` if given (oneDNN adds it inside the GEMM: one pass over the output)."""
        if self.packed:
            if residual is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, self.weight, self.bias, "add")
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        y = F.linear(x, self.weight, self.bias)
        return y if residual is None else residual + y


def _fused(*linears: torch.nn.Linear) -> _Linear:
    weight = torch.cat([m.weight.detach() for m in linears])
    biases = [m.bias for m in linears]
    bias = None if all(b is None for b in biases) else torch.cat([
        b.detach() if b is not None else m.weight.new_zeros(m.out_features) for m, b in zip(linears, biases)])
    return _Linear(weight, bias)


class _Layer:
    __slots__ = ("qkv", "o", "gate_up", "down", "norm1", "norm2", "eps1", "eps2", "qk_width", "heads", "kv_heads",
                 "head_dim", "scaling", "inter")

    def __init__(self, layer: torch.nn.Module):
        attn, mlp = layer.self_attn, layer.mlp
        self.qkv = _fused(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o = _Linear(attn.o_proj.weight.detach(), attn.o_proj.bias)
        self.gate_up = _fused(mlp.gate_proj, mlp.up_proj)
        self.down = _Linear(mlp.down_proj.weight.detach(), None)
        self.inter = mlp.gate_proj.out_features
        self.norm1, self.eps1 = layer.input_layernorm.weight.detach(), layer.input_layernorm.variance_epsilon
        self.norm2, self.eps2 = layer.post_attention_layernorm.weight.detach(), layer.post_attention_layernorm.variance_epsilon
        self.head_dim = attn.head_dim
        self.heads = attn.q_proj.out_features // self.head_dim
        self.kv_heads = attn.k_proj.out_features // self.head_dim
        self.qk_width = attn.q_proj.out_features + attn.k_proj.out_features  # q and k, then v, in qkv's output
        self.scaling = attn.scaling


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # transformers' Llama RMSNorm: normalise in fp32, cast back, then scale (in fp32 that is one fused call)
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class FastDecoder:
    """One decode step of a Llama-family causal LM over the engine's paged cache (see the module docstring)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._versions: tuple | None = None
        self._params = list(model.parameters())
        self.layers: list[_Layer] = []
        self.head: _Linear | None = None

    def refresh(self) -> None:
        """(Re)build the fused, packed weights if any parameter changed since they were built (the engine calls
        it once per generate call: weights do not change within one)."""
        versions = tuple((p._version, p.data_ptr()) for p in self._params)  # in-place writes and swapped storage
        if versions == self._versions:
            return
        inner = self.model.model
        self.layers, self.head = [], None  # the old copies go before the new ones are made: one extra copy at most
        self.layers = [_Layer(layer) for layer in inner.layers]
        self.embed = self.model.get_input_embeddings().weight.detach()
        self.norm, self.norm_eps = inner.norm.weight.detach(), inner.norm.variance_epsilon
        head = self.model.get_output_embeddings()
        self.head = _Linear(head.weight.detach(), head.bias)
        self.rotary = inner.rotary_emb
        self._versions = versions

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                 cache: PagedKVCache) -> torch.Tensor:
        """Logits [rows, 1, vocab] of one token per row: `ids`, `positions` [rows, 1]; `mask` [rows, 1, 1, keys]
        over the blocks `cache.read_blocks` lists in `cache.row_chunks` (the engine's decode step sets both); the
        weights are those of the last `refresh()`."""
        rows = ids.shape[0]
        hidden = F.embedding(ids[:, 0], self.embed)
        cos, sin = self.rotary(hidden, positions)  # [rows, 1, head_dim]
        # rotate_half(x) * sin == roll(x, half) * (sin with its first half negated): one roll instead of two
        # slices, a negation and a cat, for q and k together (they sit side by side in the fused projection)
        half = cos.shape[-1] // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        for i, layer in enumerate(self.layers):
            x = _rms_norm(hidden, layer.norm1, layer.eps1)
            qkv = layer.qkv(x)
            qk = qkv[:, : layer.qk_width].view(rows, layer.heads + layer.kv_heads, layer.head_dim)
            qk = qk * cos + qk.roll(half, -1) * sin
            q, k = qk[:, : layer.heads], qk[:, layer.heads :]
            cache.update(k[:, :, None], qkv[:, layer.qk_width :].view(rows, layer.kv_heads, 1, layer.head_dim), i)
            attn = cache.attend(i, q[:, :, None], mask, layer.scaling)  # [rows, 1, heads, head_dim]
            hidden = layer.o(attn.reshape(rows, -1), residual=hidden)
            x = _rms_norm(hidden, layer.norm2, layer.eps2)
            gate, up = layer.gate_up(x).split(layer.inter, dim=-1)
            hidden = layer.down(F.silu(gate) * up, residual=hidden)
        return self.head(_rms_norm(hidden, self.norm, self.norm_eps))[:, None]
