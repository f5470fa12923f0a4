"""The built-in engine's KV cache: fixed-size blocks in one pool per layer, shared prompt prefixes.

A sequence's keys and values live in a list of blocks: its group's prompt blocks (written once by
the prefill and read by every sample of the group) followed by its own response blocks. The cache
is a `transformers.Cache`, so any causal LM whose attention calls the cache's `update` runs on
it unchanged: before each forward the engine says where the new tokens go (`write_slots`) and which
blocks every row reads (`read_blocks`); `update` writes, gathers, and hands attention a dense
[rows, kv_heads, tokens, head_dim] view that the explicit 4-D mask makes exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache
from transformers.integrations.sdpa_attention import sdpa_attention_forward

SCRATCH_BLOCK = 0  # padding reads it (always masked) and padded writes land in it
PAGED_SDPA = "rlft_paged_sdpa"  # the attention implementation the engine selects while it runs the model


class PagedKVCache(Cache):
    """Pool per layer laid out [kv_heads, blocks, block_size, head_dim]: gathering a row's blocks along
    dim 1 leaves each head's [tokens, head_dim] matrix contiguous, so SDPA runs at dense speed."""

    def __init__(self, device: torch.device, dtype: torch.dtype, block_size: int = 16, initial_blocks: int = 64):
        super().__init__(layers=[])
        self.device, self.dtype, self.block_size = device, dtype, block_size
        self.capacity = max(2, initial_blocks)
        self.free_blocks = list(range(self.capacity - 1, SCRATCH_BLOCK, -1))  # pop() hands out low ids first
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.blocks_in_use = 0
        self.peak_blocks = 0
        self.write_slots: torch.Tensor | None = None  # [new tokens] long: block * block_size + offset
        self.read_blocks: torch.Tensor | None = None  # [rows, blocks] long, or None: attend to the new tokens only
        # (first row, end row, blocks) of rows sorted longest first: paged_sdpa gathers each chunk at its own width
        self.row_chunks: list[tuple[int, int, int]] | None = None
        # gather targets reused by every layer and step: fresh multi-MB tensors each time cost page faults on CPU
        self._gathered: list[torch.Tensor] = []

    # --- blocks ---------------------------------------------------------------------------------

    def allocate(self) -> int:
        """One free block (the pool doubles when none is left)."""
        if not self.free_blocks:
            self._grow(2 * self.capacity)
        self.blocks_in_use += 1
        self.peak_blocks = max(self.peak_blocks, self.blocks_in_use)
        return self.free_blocks.pop()

    def release(self, blocks: list[int]) -> None:
        self.free_blocks.extend(reversed(blocks))
        self.blocks_in_use -= len(blocks)

    def block_bytes(self) -> int:
        """Bytes of one block over all layers, keys and values (0 before the first forward)."""
        return sum(2 * k[:, 0].numel() * k.element_size() for k in self.keys)

    def clear(self) -> None:
        """Free every block (the pool keeps its memory) and restart the peak count."""
        self.free_blocks = list(range(self.capacity - 1, SCRATCH_BLOCK, -1))
        self.blocks_in_use = self.peak_blocks = 0

    def _grow(self, capacity: int) -> None:
        for pools in (self.keys, self.values):
            for i, old in enumerate(pools):
                new = old.new_zeros((old.shape[0], capacity, *old.shape[2:]))
                new[:, : self.capacity] = old
                pools[i] = new
        self.free_blocks = list(range(capacity - 1, self.capacity - 1, -1)) + self.free_blocks
        self.capacity = capacity

    # --- the transformers Cache interface -------------------------------------------------------

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write the new [rows, kv_heads, q, head_dim] states; return what the rows attend to."""
        rows, heads, q, dim = key_states.shape
        while len(self.keys) <= layer_idx:  # pools are shaped by the first forward (any head count / dim)
            shape = (heads, self.capacity, self.block_size, dim)
            self.keys.append(torch.zeros(shape, dtype=key_states.dtype, device=key_states.device))
            self.values.append(torch.zeros(shape, dtype=value_states.dtype, device=value_states.device))
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        flat = (heads, self.capacity * self.block_size, dim)
        keys.view(flat).index_copy_(1, self.write_slots, key_states.transpose(0, 1).reshape(heads, rows * q, dim))
        values.view(flat).index_copy_(1, self.write_slots, value_states.transpose(0, 1).reshape(heads, rows * q, dim))
        if self.read_blocks is None or self.row_chunks is not None:  # prefill, or paged_sdpa gathers itself
            return key_states, value_states
        return self._gather(layer_idx, self.read_blocks)

    def _gather(self, layer_idx: int, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of `blocks` [rows, n] as [rows, kv_heads, n * block_size, head_dim] views of head-major data
        (reused buffers), which paged_sdpa reads without a copy."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        heads, _, _, dim = keys.shape
        rows, n = blocks.shape
        index = blocks.reshape(-1)
        size = heads * len(index) * self.block_size * dim
        if not self._gathered or self._gathered[0].numel() < size or self._gathered[0].dtype != keys.dtype:
            self._gathered = [keys.new_empty(2 * size) for _ in range(2)]
        out_k, out_v = (buffer[:size].view(heads, len(index), self.block_size, dim) for buffer in self._gathered)
        torch.index_select(keys, 1, index, out=out_k)
        torch.index_select(values, 1, index, out=out_v)
        tokens = n * self.block_size
        return out_k.view(heads, rows, tokens, dim).transpose(0, 1), out_v.view(heads, rows, tokens, dim).transpose(0, 1)

    def attend(self, layer_idx: int, query: torch.Tensor, mask: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """One-token decode attention [rows, 1, heads, head_dim] over `row_chunks`: each chunk of similar-length
        rows is gathered only as wide as its longest row, not the step's longest."""
        out = query.new_empty(query.shape[0], 1, query.shape[1], query.shape[3])
        for start, end, n in self.row_chunks:
            key, value = self._gather(layer_idx, self.read_blocks[start:end, :n])
            out[start:end] = _decode_sdpa(query[start:end], key, value, mask[start:end, ..., : n * self.block_size],
                                          scaling)
        return out

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly

    def __len__(self) -> int:
        return len(self.keys)


def paged_sdpa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers attention function for the engine: one-token decode steps read the paged cache in
    row chunks (`paged_cache` comes through the model's forward kwargs); anything else is transformers' SDPA."""
    cache = kwargs.pop("paged_cache", None)
    if cache is not None and cache.row_chunks is not None and query.shape[2] == 1 and kwargs.get("softcap") is None:
        return cache.attend(module.layer_idx, query, attention_mask, scaling), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def _decode_sdpa(query, key, value, mask, scaling) -> torch.Tensor:
    """SDPA of queries [rows, heads, 1, dim] over head-major gathers, batched as (kv head, row) so no operand
    is copied; query heads sharing a KV head ride in the query-length dimension (grouped-query attention)."""
    rows, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    q = query.reshape(rows, kv_heads, heads // kv_heads, dim).transpose(0, 1)
    out = F.scaled_dot_product_attention(q, key.transpose(0, 1), value.transpose(0, 1), attn_mask=mask.transpose(0, 1),
                                         scale=scaling)
    return out.transpose(0, 1).reshape(rows, 1, heads, dim)


AttentionInterface.register(PAGED_SDPA, paged_sdpa)
