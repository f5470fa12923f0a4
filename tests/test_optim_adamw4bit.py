"""4-bit AdamW (docs/methods.md#4-bit-adamw): codebooks, quantization error bounds, state size, agreement with AdamW."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlft.config import OptimConfig
from rlft.optim import build_optimizer, quant4, state_bytes
from rlft.optim.adamw4bit import AdamW4bit

HALF_GAP_DYNAMIC = 0.1125  # half the widest gap of the signed codebook (0.2125..0.4375..0.8875, -1..-0.8875)


def test_codebooks_are_the_papers_16_values():
    expected = [0.0055, 0.0325, 0.0775, 0.2125, 0.4375, 0.6625, 0.8875]
    assert quant4.DYNAMIC_CODES.tolist() == pytest.approx(sorted([-x for x in expected] + [0.0] + expected + [1.0]))
    assert quant4.LINEAR_CODES.tolist() == pytest.approx([k / 16 for k in range(1, 17)])
    assert quant4.LINEAR_CODES.min() > 0


def test_blockwise_quantization_rounds_to_nearest_code_within_error_bound():
    torch.manual_seed(0)
    x = torch.randn(1000) * torch.logspace(-4, 1, 1000)  # blocks of very different magnitudes
    packed, scale = quant4.quantize_blockwise(x, quant4.DYNAMIC_CODES, 128)
    assert packed.dtype == torch.uint8 and packed.numel() == 500 and scale.dtype == torch.float32
    assert scale.numel() == 8
    back = quant4.dequantize_blockwise(packed, scale, quant4.DYNAMIC_CODES, 128, x.numel())
    per_elem_scale = scale.repeat_interleave(128)[: x.numel()]
    assert ((back - x).abs() <= HALF_GAP_DYNAMIC * per_elem_scale * (1 + 1e-6)).all()
    # round to nearest: no other code is closer to the normalized value
    normalized = x / per_elem_scale
    dist_to_all = (normalized[:, None] - quant4.DYNAMIC_CODES[None, :]).abs().min(dim=1).values
    assert torch.allclose((back / per_elem_scale - normalized).abs(), dist_to_all, atol=1e-6)


def test_rank1_second_moment_is_bounded_by_its_scale_and_never_zero():
    torch.manual_seed(0)
    v = torch.rand(37, 53).square() * torch.logspace(-6, 0, 53)  # columns of very different magnitudes
    packed, rowmax, colmax = quant4.quantize_rank1(v, quant4.LINEAR_CODES)
    assert packed.numel() == (37 * 53 + 1) // 2 and rowmax.shape == (37,) and colmax.shape == (53,)
    back = quant4.dequantize_rank1(packed, rowmax, colmax, quant4.LINEAR_CODES)
    scale = torch.minimum(rowmax[:, None], colmax[None, :])
    assert (v <= scale).all()
    err = (back - v).abs()
    above = v >= scale / 16
    assert (err[above] <= scale[above] / 32 * (1 + 1e-6)).all()  # half of the 1/16 step
    assert (back[~above] == scale[~above] / 16).all()  # below the smallest code: rounded up to it
    assert (back > 0).all()  # the zero-free codebook keeps 1/sqrt(v) finite


def test_zero_blocks_and_rows_quantize_to_zero():
    x = torch.zeros(300)
    packed, scale = quant4.quantize_blockwise(x, quant4.DYNAMIC_CODES, 128)
    assert quant4.dequantize_blockwise(packed, scale, quant4.DYNAMIC_CODES, 128, 300).abs().max() == 0
    v = torch.zeros(4, 6)
    v[1, 2] = 3.0
    back = quant4.dequantize_rank1(*quant4.quantize_rank1(v, quant4.LINEAR_CODES), quant4.LINEAR_CODES)
    assert back[0].abs().max() == 0 and back[1, 2] == 3.0


def _tiny_policy() -> Qwen2ForCausalLM:
    """The embedded default model's shape (scripts/make_tiny_model.py), randomly initialized."""
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=128, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True))


def _state_bytes_after_one_step(model, name: str) -> int:
    opt = build_optimizer(model.parameters(), OptimConfig(name=name))
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    return state_bytes(opt)


def test_adamw4bit_state_is_under_016x_of_fp32_adamw():
    model = _tiny_policy()
    fp32 = _state_bytes_after_one_step(model, "adamw")
    assert fp32 >= 8 * sum(p.numel() for p in model.parameters())
    assert _state_bytes_after_one_step(model, "adamw-4bit") <= 0.16 * fp32
    assert _state_bytes_after_one_step(model, "adamw-4bit-factor") <= 0.10 * fp32


def test_only_tensors_above_quant_min_numel_are_quantized():
    big, small = torch.nn.Parameter(torch.randn(64, 65)), torch.nn.Parameter(torch.randn(4096))
    opt = build_optimizer([big, small], OptimConfig(name="adamw-4bit"))
    big.grad, small.grad = torch.randn_like(big), torch.randn_like(small)
    opt.step()
    assert opt.state[big]["m_codes"].dtype == torch.uint8 and "v_rowmax" in opt.state[big]
    assert opt.state[small]["exp_avg"].dtype == torch.float32  # 4096 is not > quant_min_numel


def test_quant_block_size_sets_the_elements_per_scale():
    w = torch.nn.Parameter(torch.randn(64, 65))
    opt = build_optimizer([w], OptimConfig(name="adamw-4bit", quant_block_size=64))
    w.grad = torch.randn_like(w)
    opt.step()
    assert opt.state[w]["m_scale"].numel() == 65  # ceil(64 * 65 / 64)


def test_factor_variant_keeps_row_and_column_statistics_for_matrices():
    w, b = torch.nn.Parameter(torch.randn(80, 96)), torch.nn.Parameter(torch.randn(5000))
    opt = build_optimizer([w, b], OptimConfig(name="adamw-4bit-factor"))
    w.grad, b.grad = torch.randn_like(w), torch.randn_like(b)
    opt.step()
    assert opt.state[w]["v_row"].shape == (80,) and opt.state[w]["v_col"].shape == (96,)
    assert "v_codes" not in opt.state[w] and "v_scale" in opt.state[b]  # 1-D: blockwise 4-bit v


def test_adamw4bit_equals_torch_adamw_when_nothing_is_quantized():
    torch.manual_seed(0)
    ref = torch.nn.Parameter(torch.randn(50, 40))
    mine = torch.nn.Parameter(ref.detach().clone())
    opt_ref = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    opt = AdamW4bit([mine], lr=1e-2, weight_decay=0.1, min_numel=10**9)
    for _ in range(5):
        g = torch.randn(50, 40)
        ref.grad, mine.grad = g.clone(), g.clone()
        opt_ref.step()
        opt.step()
    assert torch.allclose(ref, mine, rtol=0, atol=1e-6)
