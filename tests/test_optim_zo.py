"""optim.name=zo (docs/methods.md#zeroth-order-update): regenerated perturbations, exact restore, the SPSA estimate, resume, LoRA."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlft.config import OptimConfig, resolve_config
from rlft.learner.learner import Learner
from rlft.optim import build_optimizer
from rlft.optim.zo import ZerothOrder, direction, perturbed
from rlft.pipeline.batch import build_train_batch


def _model(dtype=torch.float32) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).to(dtype)


TOKENS = torch.randint(0, 32, (3, 7), generator=torch.Generator().manual_seed(0))


def _loss(model) -> torch.Tensor:
    """Next-token cross-entropy in the model's dtype (transformers' own loss upcasts to float32 only)."""
    logits = model(input_ids=TOKENS).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), TOKENS[:, 1:].flatten())


def _closure(model, opt):
    def loss_at(perturb) -> float:
        with perturbed(model, opt.index, perturb):
            return _loss(model).item()
    return loss_at


def test_zo_direction_is_regenerated_from_its_seed():
    p = torch.empty(5, 7)
    assert torch.equal(direction(3, 1, p), direction(3, 1, p))
    assert not torch.equal(direction(3, 1, p), direction(4, 1, p))
    assert not torch.equal(direction(3, 1, p), direction(3, 2, p))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zo_perturbed_forward_sees_theta_plus_eps_z_and_leaves_weights_bitwise(dtype):
    model = _model(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = ZerothOrder(model.parameters(), lr=0.0, eps=1e-2)
    # reference: a copy whose weights are written as θ + εz explicitly (tied head: one tensor, one z)
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for i, p in enumerate(shifted.parameters()):
            p.copy_((p.float() + 1e-2 * direction(11, i, p)).to(dtype))
    with torch.no_grad(), perturbed(model, opt.index, opt.perturbation(11, 1e-2)):
        inside = model(input_ids=TOKENS).logits
    assert torch.equal(inside, shifted(input_ids=TOKENS).logits)
    with torch.no_grad():
        opt.step(_closure(model, opt))  # lr 0: the step's evaluations alone
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(isinstance(p, torch.nn.Parameter) for m in model.modules() for p in m._parameters.values()
               if p is not None)


class _TinyLM(torch.nn.Module):
    """Embedding -> linear -> tanh -> layer norm -> head, all in float64 (Qwen2 keeps norms in float32)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.hidden = torch.nn.Embedding(32, 4), torch.nn.Linear(4, 4)
        self.norm, self.head = torch.nn.LayerNorm(4), torch.nn.Linear(4, 32)
        self.double()

    def forward(self, input_ids):
        return self.head(self.norm(torch.tanh(self.hidden(self.embed(input_ids)))))


def _tiny_loss(model) -> torch.Tensor:
    logits = model(TOKENS)[:, :-1]
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), TOKENS[:, 1:].flatten())


def test_zo_spsa_estimate_matches_finite_difference_and_gradient():
    from rlft.optim.flora import next_seed

    model = _TinyLM()
    params = list(model.parameters())
    eps, seed, count = 1e-5, 5, 200

    def closure(opt):
        def loss_at(perturb) -> float:
            with perturbed(model, opt.index, perturb):
                return _tiny_loss(model).item()
        return loss_at

    _tiny_loss(model).backward()  # autograd gradient: what the estimate is unbiased for
    grad = torch.cat([p.grad.flatten() for p in params])
    # reference: the central finite difference along z (perturbation 0 of the first step), weights written by hand
    with torch.no_grad():
        z = [direction(next_seed(seed * 31 + 0), i, p).double() for i, p in enumerate(params)]
        theta = [p.clone() for p in params]
        losses = []
        for sign in (1, -1):
            for p, t, d in zip(params, theta, z):
                p.copy_(t + sign * eps * d)
            losses.append(_tiny_loss(model).item())
        for p, t in zip(params, theta):
            p.copy_(t)
    finite_difference = (losses[0] - losses[1]) / (2 * eps)
    assert finite_difference == pytest.approx(float(grad @ torch.cat([d.flatten() for d in z])), rel=1e-6)
    one = ZerothOrder(params, lr=0.0, eps=eps, perturbations=1, seed=seed)
    with torch.no_grad():
        assert one.step(closure(one))["zo/projected_grad_mean"] == pytest.approx(finite_difference, rel=1e-9)
    # lr 1, K perturbations: the step is -mean_k g_k z_k, whose cosine with -grad is about 1/sqrt(1 + d/K)
    many = ZerothOrder(params, lr=1.0, eps=eps, perturbations=count, seed=seed)
    with torch.no_grad():
        many.step(closure(many))
        step = torch.cat([(p - t).flatten() for p, t in zip(params, theta)])
    cosine = float(-step @ grad / (step.norm() * grad.norm()))
    assert cosine > 0.8 * (1 + grad.numel() / count) ** -0.5, (cosine, grad.numel())


def test_zo_weight_decay_skips_biases_and_norms():
    model = _model()
    opt = ZerothOrder(model.parameters(), lr=0.1, eps=1e-3, weight_decay=0.5)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        opt.step(lambda perturb: 1.0)  # equal losses: g = 0, only the decay acts
    for n, p in model.named_parameters():
        if p.dim() >= 2:
            torch.testing.assert_close(p, before[n] * (1 - 0.1 * 0.5), rtol=1e-6, atol=0)
        else:
            assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zo_resume_continues_bitwise(dtype):
    cfg = OptimConfig(name="zo", lr=1e-3, zo_eps=1e-3, zo_perturbations=2, weight_decay=0.01)

    def train(model, opt, steps):
        for _ in range(steps):
            with torch.no_grad():
                opt.step(_closure(model, opt))

    straight = _model(dtype)
    torch.manual_seed(0)  # the optimizer draws its start seed from torch's generator
    opt = build_optimizer(straight.parameters(), cfg)
    train(straight, opt, 4)
    first = _model(dtype)
    torch.manual_seed(0)
    opt = build_optimizer(first.parameters(), cfg)
    train(first, opt, 2)
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = _model(dtype)
    resumed.load_state_dict(saved["model"])
    torch.manual_seed(99)  # another start seed: the saved one must win
    opt = build_optimizer(resumed.parameters(), cfg)
    assert opt.param_groups[0]["seed"] != saved["optim"]["param_groups"][0]["seed"]
    opt.load_state_dict(saved["optim"])
    train(resumed, opt, 2)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


REWARDS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])


def _batch(algo_cfg):
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(4, 90, (n,), generator=gen).tolist() for n in (3, 5)]
    responses = [[torch.randint(4, 90, (n,), generator=gen).tolist() for n in group] for group in ([1, 6, 3], [4, 2, 5])]
    logprobs = [[[-1.0] * len(r) for r in group] for group in responses]
    return build_train_batch(prompts, responses, logprobs, REWARDS, algo_cfg, max_new_tokens=8, pad_id=0)


ZO = ["learner.device=cpu", "learner.micro_batch_size=2", "optim.name=zo", "optim.lr=1e-3", "optim.zo_perturbations=2",
      "ray.torch_threads=1"]


def test_zo_learner_with_lora_moves_only_adapters_and_logs_projected_gradients():
    torch.set_num_threads(1)
    learner = Learner(resolve_config("grpo-ba", None, [*ZO, "lora.kind=lora"]))
    base = {n: p.clone() for n, p in learner.model.named_parameters() if not p.requires_grad}
    adapters = {n: p.clone() for n, p in learner.model.named_parameters() if p.requires_grad}
    metrics = learner.train_step(_batch(learner.cfg.algo))
    for n, p in learner.model.named_parameters():
        assert torch.equal(p, base[n]) if n in base else not torch.equal(p, adapters[n]), n
    assert metrics["learner/zo/projected_grad_abs_mean"] > 0
    assert "learner/zo/projected_grad_std" in metrics and "learner/pg_loss" in metrics


def test_zo_learner_resume_equals_uninterrupted(tmp_path):
    torch.set_num_threads(1)
    cfg = resolve_config("grpo-ba", None, ZO)
    straight = Learner(cfg)
    batch = _batch(cfg.algo)
    for _ in range(3):
        straight.train_step(batch)
    first = Learner(cfg)
    first.train_step(batch)
    first.save(str(tmp_path / "ckpt"))
    resumed = Learner(resolve_config("grpo-ba", None, [*ZO, "train.seed=7"]))  # another start seed
    resumed.load(str(tmp_path / "ckpt"))
    for _ in range(2):
        resumed.train_step(batch)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), key


def test_zo_with_deepspeed_backend_is_a_config_error():
    pytest.importorskip("deepspeed")
    from rlft.errors import ConfigError

    with pytest.raises(ConfigError, match="steps on loss evaluations"):
        resolve_config("grpo-ba", None, ["optim.name=zo", "learner.backend=deepspeed"])


def test_zo_step_with_nonfinite_loss_changes_no_weight():
    model = _model()
    opt = ZerothOrder(model.parameters(), lr=0.1, eps=1e-3, weight_decay=0.5)
    before = {n: p.clone() for n, p in model.named_parameters()}
    losses = iter([1.0, float("nan")])
    with torch.no_grad():
        stats = opt.step(lambda perturb: next(losses))
    assert stats["zo/nonfinite"] == 1.0
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
