"""Registries: entries declare what they need, cross-checks read it, --help lists every registry."""

from __future__ import annotations

import math

import pytest
import torch

from rlft.algorithms import ADVANTAGES, AGGREGATIONS, POLICY_LOSSES
from rlft.algorithms.policy_loss import clipped_surrogate
from rlft.config import AlgoConfig, resolve_config
from rlft.errors import ConfigError
from rlft.lora import LORA_KINDS
from rlft.optim import OPTIMIZERS
from rlft.registry import Registry
from rlft.reward.registry import REWARDS


def test_an_entry_may_only_need_words_the_registry_module_defines():
    registry: Registry = Registry("thing")
    with pytest.raises(ValueError, match="not words of rlft.registry.NEEDS"):
        registry.add("x", object(), needs={"a_gpu_please"})


def test_a_new_optimizer_that_needs_whole_matrices_is_refused_under_zero_without_naming_it(monkeypatch):
    pytest.importorskip("deepspeed")
    # registering is all a new optimizer does: the ZeRO check reads its declared need
    monkeypatch.setitem(OPTIMIZERS._items, "my-matrix-opt", lambda params, cfg: torch.optim.SGD(params, lr=cfg.lr))
    monkeypatch.setitem(OPTIMIZERS._needs, "my-matrix-opt", frozenset({"whole_matrices"}))
    assert resolve_config("grpo-ba", None, ["optim.name=my-matrix-opt"]).optim.name == "my-matrix-opt"
    with pytest.raises(ConfigError, match=r"optim.name=my-matrix-opt does not work with learner.backend=deepspeed: "
                                          r"it needs each weight's matrix shape.*\['adamw', 'adamw-4bit'\]"):
        resolve_config("grpo-ba", None, ["learner.backend=deepspeed", "optim.name=my-matrix-opt"])


def test_adapter_kinds_with_a_pre_step_update_declare_whole_gradients():
    assert {n for n in LORA_KINDS if "whole_gradients" in LORA_KINDS.needs(n)} == {"polar", "reflora", "reflora-s"}
    assert LORA_KINDS.names_without({"whole_gradients"}) == ["lora", "none"]


def test_unknown_policy_loss_names_the_choices():
    with pytest.raises(ConfigError, match=r"algo.policy_loss: 'ppo-clipp' is not one of .*did you mean 'ppo-clip'"):
        resolve_config("grpo-ba", None, ["algo.policy_loss=ppo-clipp"])


def test_help_lists_every_registry_and_its_entries():
    from rlft.train import _help_epilog

    text = _help_epilog()
    for title, registry in [("algo.advantage", ADVANTAGES), ("algo.aggregation", AGGREGATIONS),
                            ("algo.policy_loss", POLICY_LOSSES), ("optim.name", OPTIMIZERS),
                            ("lora.kind", LORA_KINDS), ("--reward", REWARDS)]:
        section = text[text.index(f"({title}"):].split("\n\n")[0]
        assert all(name in section for name in registry.names()), title
    engines = text[text.index("(rollout.engine)"):].split("\n\n")[0]
    assert "builtin" in engines and "vllm" in engines
    assert "flora [needs whole_matrices]" in text


def test_ppo_clip_entry_is_the_clipped_surrogate_with_the_configured_bounds():
    log_ratio, adv = torch.log(torch.tensor([[0.5, 1.1, 1.5, 5.0]])), torch.tensor([[1.0], [-1.0]])
    cfg = AlgoConfig(clip_eps_high=0.28, dual_clip=3.0)
    got, _ = POLICY_LOSSES.get("ppo-clip")(log_ratio.expand(2, 4), adv, cfg)
    want, _ = clipped_surrogate(log_ratio.expand(2, 4), adv, 0.2, 0.28, 3.0)
    assert torch.equal(got, want)


def test_cispo_keeps_the_gradient_of_clipped_tokens_weighted_by_the_clipped_ratio():
    # rho = 1.5 > 1 + eps_high: PPO's clip zeroes the gradient, CISPO gives -clip(rho) * A * d log pi
    logp = torch.tensor([[math.log(1.5), math.log(1.1)]], requires_grad=True)
    loss, clipped = POLICY_LOSSES.get("cispo")(logp - 0.0, torch.tensor([[2.0]]), AlgoConfig())
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[-2.0 * 1.2, -2.0 * 1.1]]))
    assert torch.allclose(loss.detach(), torch.tensor([[-2.0 * 1.2, -2.0 * 1.1]]))
    assert clipped.tolist() == [[True, False]]
    ppo_logp = logp.detach().clone().requires_grad_(True)
    POLICY_LOSSES.get("ppo-clip")(ppo_logp - 0.0, torch.tensor([[2.0]]), AlgoConfig())[0].sum().backward()
    assert ppo_logp.grad[0, 0] == 0.0


def test_cispo_dual_clip_caps_the_weight_of_negative_advantages():
    logp = torch.tensor([[math.log(5.0)]], requires_grad=True)
    loss, _ = POLICY_LOSSES.get("cispo")(logp - 0.0, torch.tensor([[-1.0]]), AlgoConfig(clip_eps_high=9.0, dual_clip=3.0))
    loss.sum().backward()
    assert torch.allclose(logp.grad, torch.tensor([[3.0]]))
