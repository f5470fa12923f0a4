"""Every optimizer's state saves and loads exactly: a resumed run continues bitwise; moments rescale."""

import io

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlft.config import OptimConfig
from rlft.optim import OPTIMIZERS, build_optimizer, needs_backward, quant4, scale_moments

GRADIENT_OPTIMIZERS = [n for n in OPTIMIZERS.names() if needs_backward(n)]  # zo: tests/test_optim_zo.py
CFG = dict(lr=1e-2, weight_decay=0.01, quant_min_numel=256, flora_rank=4, flora_kappa=3)


def _model(dtype: torch.dtype) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    return Qwen2ForCausalLM(config).to(dtype)


def _train(model, opt, steps: range) -> None:
    for step in steps:
        gen = torch.Generator().manual_seed(step)  # the same gradients whatever ran before
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", GRADIENT_OPTIMIZERS)
def test_optimizer_resume_continues_bitwise(name, dtype):
    straight = _model(dtype)
    opt = build_optimizer(straight.parameters(), OptimConfig(name=name, **CFG))
    _train(straight, opt, range(8))

    first = _model(dtype)
    opt = build_optimizer(first.parameters(), OptimConfig(name=name, **CFG))
    _train(first, opt, range(4))  # flora re-projects at steps 4 and 7: both sides of the cut
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(dtype)
    resumed.load_state_dict(saved["model"])
    opt = build_optimizer(resumed.parameters(), OptimConfig(name=name, **CFG))
    opt.load_state_dict(saved["optim"])
    _train(resumed, opt, range(4, 8))

    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def _moments(state: dict, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, v) as dense fp32 tensors from any optimizer's state format (flora: its projected m)."""
    if "exp_avg" in state:
        return state["exp_avg"], state["exp_avg_sq"]
    if "exp_avg_proj" in state:
        return state["exp_avg_proj"], quant4.factored_row_scale(state)[:, None] * state["v_col"][None, :]
    m = quant4.dequantize_blockwise(state["m_codes"], state["m_scale"], quant4.DYNAMIC_CODES, 128, p.numel())
    if "v_row" in state:
        return m, quant4.factored_row_scale(state)[:, None] * state["v_col"][None, :]
    return m, quant4.dequantize_rank1(state["v_codes"], state["v_rowmax"], state["v_colmax"], quant4.LINEAR_CODES)


@pytest.mark.parametrize("name", GRADIENT_OPTIMIZERS)
def test_scale_moments_multiplies_first_and_second_moment(name):
    """RefLoRA-S rescales Adam moments through scale_moments; 4-bit state scales through its fp32 scales."""
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(48, 40))
    opt = build_optimizer([w], OptimConfig(name=name, quant_min_numel=1000, flora_rank=4))
    for _ in range(2):
        w.grad = torch.randn_like(w)
        opt.step()
    m0, v0 = (t.clone() for t in _moments(opt.state[w], w))
    scale_moments(opt, w, 0.5, 3.0)
    m1, v1 = _moments(opt.state[w], w)
    assert torch.allclose(m1, 0.5 * m0, rtol=1e-6) and torch.allclose(v1, 3.0 * v0, rtol=1e-6)
