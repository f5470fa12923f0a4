"""LoRA / PoLAR / RefLoRA / RefLoRA-S adapters (docs/methods.md#adapters): wrapping, init, and the pre-step hooks."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlft.config import LoraConfig, OptimConfig
from rlft.errors import ConfigError
from rlft.lora import LoraLinear, apply_lora, landing_field, lora_before_step, lora_layers
from rlft.lora.hooks import geometric_mean
from rlft.optim import build_optimizer


def _model(tie: bool = True) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tie))


@pytest.mark.parametrize("kind", ["lora", "polar", "reflora", "reflora-s"])
def test_apply_lora_wraps_targets_freezes_base_and_starts_at_the_base_output(kind):
    model = _model()
    tokens = torch.randint(0, 64, (2, 6))
    before = model(tokens).logits
    apply_lora(model, LoraConfig(kind=kind, rank=4, target_modules=["q_proj", r"mlp\.down_proj"]))
    names = [name for name, _ in lora_layers(model)]
    assert names == [f"model.layers.{i}.{m}" for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")]
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert torch.allclose(model(tokens).logits, before, atol=1e-6)  # B = 0 (LoRA) or Θ = 0 (PoLAR) at init


def test_apply_lora_none_leaves_the_model_alone_and_bad_patterns_are_config_errors():
    model = _model()
    apply_lora(model, LoraConfig(kind="none"))
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="match no linear layer"):
        apply_lora(_model(), LoraConfig(kind="lora", target_modules=["qproj"]))
    with pytest.raises(ConfigError, match="tied"):
        apply_lora(_model(tie=True), LoraConfig(kind="lora", target_modules=["lm_head"]))


def test_polar_factors_start_orthonormal():
    layer = LoraLinear(torch.nn.Linear(40, 24), "polar", rank=4, alpha=8.0)
    assert torch.allclose(layer.lora_X.T @ layer.lora_X, torch.eye(4), atol=1e-5)
    assert torch.allclose(layer.lora_Y.T @ layer.lora_Y, torch.eye(4), atol=1e-5)
    assert layer.lora_theta.abs().max() == 0


def test_landing_field_equals_its_m_by_m_definition():
    """(G Xᵀ − X Gᵀ) X + λ X (XᵀX − I), computed without the m×m skew matrix."""
    torch.manual_seed(0)
    x, g = torch.randn(50, 3, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    skew = g @ x.T - x @ g.T  # [m, m]: what the implementation must never build
    want = skew @ x + 0.1 * x @ (x.T @ x - torch.eye(3, dtype=torch.float64))
    assert torch.allclose(landing_field(x, g, 0.1), want)


def _train(model, optim_name: str, steps: int) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = build_optimizer(params, OptimConfig(name=optim_name, lr=1e-2))
    tokens = torch.randint(0, 64, (4, 8), generator=torch.Generator().manual_seed(1))
    for step in range(steps):
        loss = model(tokens, labels=tokens).loss
        opt.zero_grad()
        loss.backward()
        lora_before_step(model, opt, step)
        opt.step()
    return opt


def test_polar_stays_near_the_stiefel_manifold_and_learns():
    model = _model()
    apply_lora(model, LoraConfig(kind="polar", rank=4, landing_lambda=1.0))
    _train(model, "adamw", steps=30)
    for _, layer in lora_layers(model):
        for factor in (layer.lora_X, layer.lora_Y):
            assert (factor.T @ factor - torch.eye(4)).abs().max() < 0.1
        assert layer.lora_theta.abs().max() > 0


def test_geometric_mean_solves_s_aat_s_equals_btb():
    torch.manual_seed(0)
    a, b = torch.randn(4, 30, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    s, s_inv = geometric_mean(a @ a.T, b.T @ b)
    assert torch.allclose(s @ (a @ a.T) @ s, b.T @ b)
    assert torch.allclose(s, s.T) and torch.allclose(s @ s_inv, torch.eye(4, dtype=torch.float64))
    assert (torch.linalg.eigvalsh(s) > 0).all()


def test_reflora_preconditions_gradients_after_warmup_only():
    model = _model()
    apply_lora(model, LoraConfig(kind="reflora", rank=4, reflora_warmup_steps=3))
    opt = _train(model, "adamw", steps=3)  # B is non-zero now
    layer = lora_layers(model)[0][1]
    a, b = layer.lora_A, layer.lora_B
    a.grad, b.grad = torch.randn_like(a), torch.randn_like(b)
    ga, gb = a.grad.clone(), b.grad.clone()
    lora_before_step(model, opt, step=2)  # still warming up
    assert torch.equal(a.grad, ga)
    lora_before_step(model, opt, step=3)
    s, s_inv = geometric_mean((a @ a.T).double(), (b.T @ b).double())
    assert torch.allclose(a.grad, s_inv.float() @ ga, rtol=1e-4, atol=1e-6)
    assert torch.allclose(b.grad, gb @ s.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("optim_name", ["adamw", "adamw-4bit"])
def test_reflora_s_balances_norms_keeps_delta_w_and_rescales_adam_moments(optim_name):
    model = _model()
    apply_lora(model, LoraConfig(kind="reflora-s", rank=4, reflora_warmup_steps=1000))
    opt = _train(model, optim_name, steps=3)
    layer = lora_layers(model)[0][1]
    a, b = layer.lora_A, layer.lora_B
    delta, s = layer.delta_weight().detach().clone(), (b.norm() / a.norm()).item()
    m_a = opt.state[a]["exp_avg"].clone()  # A [4, 32] stays below quant_min_numel: fp32 moments
    lora_before_step(model, opt, step=1000)
    assert torch.allclose(a.norm(), b.norm(), rtol=1e-5)
    assert torch.allclose(layer.delta_weight(), delta, atol=1e-6)
    assert torch.allclose(opt.state[a]["exp_avg"], m_a / s**0.5, rtol=1e-5)
