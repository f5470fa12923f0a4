"""The optimizer registry: `@OPTIMIZERS.register(name)` on a builder (params, OptimConfig) -> Optimizer."""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from rlft.registry import Registry

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("adamw")
def build_adamw(params: Iterable, cfg) -> torch.optim.Optimizer:
    """torch's AdamW in fp32 (fused/foreach picked by torch)."""
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def needs_backward(name: str) -> bool:
    """Whether optimizer `name` steps on gradients (False: it needs a loss closure, NEEDS 'loss_closure')."""
    OPTIMIZERS.get(name, key="optim.name")
    return "loss_closure" not in OPTIMIZERS.needs(name)


def build_optimizer(params: Iterable, cfg) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name` (an OptimConfig) over `params`."""
    return OPTIMIZERS.get(cfg.name, key="optim.name")(params, cfg)
