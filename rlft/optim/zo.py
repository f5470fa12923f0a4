"""Zeroth-order optimizer (MeZO-SGD; ZO2, L. Wang et al., arXiv 2503.12668; docs/methods.md#zeroth-order-update): 'zo'.

No backward pass and no optimizer state. Per step and per perturbation k = 1..K a seed s_k; the
direction z_k ~ N(0, I) of every trainable tensor is regenerated from (s_k, the tensor's index)
whenever it is needed and never stored. The caller's closure evaluates the loss with the weights
read as θ + εz and θ − εz, and

    g_k = (L(θ + εz_k) − L(θ − εz_k)) / (2ε)
    θ  ← θ − lr · (mean_k g_k · z_k + wd · θ)        (no decay on 1-D tensors: biases, norms)

θ is never written during the evaluations: `perturbed` hands each module its perturbed weights
for the length of that module's forward only (one layer's copy at a time, built from the
regenerated z), so the weights after the evaluations are θ bit for bit by construction, rather
than by the paper's in-place θ + εz − 2εz + εz, which rounding leaves a few ulps off.

The step seed lives in the parameter group (`seed`), so it is saved and restored with the
optimizer's state_dict: a resumed run draws the same perturbations as one that did not stop. A step
whose projected gradients are not finite changes no weight (`zo/nonfinite` = 1).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Container, Iterable, Iterator

import torch
from torch import nn

from rlft.optim.flora import next_seed
from rlft.optim.registry import OPTIMIZERS

Perturb = Callable[[torch.Tensor], "torch.Tensor | None"]  # parameter -> the value it reads as (None: itself)


def direction(seed: int, index: int, p: torch.Tensor, device: torch.device | None = None) -> torch.Tensor:
    """z ~ N(0, I) [p.shape] float32 of trainable tensor number `index` under perturbation seed `seed`.

    Drawn on `device` (default p's): each device type has its own generator, so a tensor that moves
    between CPU and GPU (ZO2) must draw its z on one fixed device.
    """
    gen = torch.Generator(device=device or p.device).manual_seed(next_seed(seed * 1_000_003 + index))
    z = torch.randn(p.shape, generator=gen, device=device or p.device, dtype=torch.float32)
    return z.to(device=p.device, dtype=_compute_dtype(p))


def _compute_dtype(p: torch.Tensor) -> torch.dtype:
    """float32, or the parameter's dtype when wider (float64)."""
    return torch.promote_types(p.dtype, torch.float32)


class ZerothOrder(torch.optim.Optimizer):
    """SPSA gradient estimate from 2K loss evaluations, then SGD with decoupled weight decay."""

    def __init__(self, params: Iterable, lr: float = 1e-6, eps: float = 1e-3, weight_decay: float = 0.0,
                 perturbations: int = 1, seed: int = 0):
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay, perturbations=perturbations,
                                      seed=seed))
        self.index = {p: i for i, p in enumerate(p for g in self.param_groups for p in g["params"])}
        self.rng_device: torch.device | None = None  # where z is drawn (None: on each tensor's device)

    def perturbation(self, seed: int, scale: float) -> Perturb:
        """Reads trainable p as p + scale·z(seed, p), in p's dtype (computed in at least float32)."""

        def value(p: torch.Tensor) -> torch.Tensor | None:
            index = self.index.get(p)
            if index is None:
                return None
            return (p.to(_compute_dtype(p)) + scale * direction(seed, index, p, self.rng_device)).to(p.dtype)

        return value

    @torch.no_grad()
    def step(self, closure: Callable[[Perturb], float] | None = None) -> dict[str, float]:  # type: ignore[override]
        """One update; `closure(perturb)` returns the loss with every trainable p read as perturb(p).

        Returns the projected gradients' statistics (the `zo/` metrics).
        """
        if closure is None:
            raise RuntimeError("the zeroth-order optimizer needs a closure that evaluates the loss; "
                               "it has no gradients to step on")
        group = self.param_groups[0]  # one group: seeds and K are per step, not per tensor
        if len(self.param_groups) > 1:
            raise RuntimeError("the zeroth-order optimizer takes one parameter group")
        eps, seeds = group["eps"], self.step_seeds()
        plus, minus = [], []
        for seed in seeds:
            plus.append(float(closure(self.perturbation(seed, eps))))
            minus.append(float(closure(self.perturbation(seed, -eps))))
        grads = [(a - b) / (2 * eps) for a, b in zip(plus, minus)]
        update = {"seeds": seeds, "grads": grads, "lr": group["lr"], "weight_decay": group["weight_decay"]}
        if all(map(math.isfinite, grads)):  # a NaN/inf loss would write NaN into every weight: skip the update
            for p in self.index:
                self.apply_update(p, update)
        return self.finish_step(plus, minus)

    def step_seeds(self) -> list[int]:
        """The K perturbation seeds of the coming step."""
        group = self.param_groups[0]
        return [next_seed(group["seed"] * 31 + k) for k in range(group["perturbations"])]

    def apply_update(self, p: torch.Tensor, update: dict) -> None:
        """θ ← θ − lr·(mean_k g_k·z_k + wd·θ) on one tensor; `update`: seeds, grads, lr, weight_decay of a step."""
        index, count = self.index[p], len(update["seeds"])
        delta = torch.zeros(p.shape, dtype=_compute_dtype(p), device=p.device)
        for seed, g in zip(update["seeds"], update["grads"]):
            delta.add_(direction(seed, index, p, self.rng_device), alpha=g / count)
        p32 = p.to(delta.dtype)
        if p.dim() >= 2 and update["weight_decay"]:
            delta.add_(p32, alpha=update["weight_decay"])
        p.copy_(p32.sub_(delta, alpha=update["lr"]))

    def finish_step(self, plus: list[float], minus: list[float]) -> dict[str, float]:
        """Advance the seed; the step's statistics from its K pairs of losses."""
        group = self.param_groups[0]
        group["seed"] = next_seed(group["seed"])
        g = torch.tensor([(a - b) / (2 * group["eps"]) for a, b in zip(plus, minus)], dtype=torch.float64)
        return {"zo/nonfinite": float(not bool(torch.isfinite(g).all())), "zo/projected_grad_mean": float(g.mean()), "zo/projected_grad_abs_mean": float(g.abs().mean()),
                "zo/projected_grad_std": float(g.std()) if len(g) > 1 else 0.0,
                "zo/loss_plus": sum(plus) / len(g), "zo/loss_minus": sum(minus) / len(g)}


@contextmanager
def perturbed(model: nn.Module, trainable: Container[torch.Tensor], perturb: Perturb,
              whole: Iterable[nn.Module] = ()) -> Iterator[None]:
    """Inside, each module reads its `trainable` parameters as perturb(p) during its forward (one layer at a time).

    Modules in `whole` (the output embedding, which the fused log-prob reads outside any forward)
    hold their perturbed weights for the whole block instead. Nothing is written into a parameter:
    the perturbed tensors replace the module's entries in `_parameters` and are dropped after.
    """
    whole = list(whole)

    def swap(module: nn.Module) -> dict[str, torch.Tensor]:
        saved = {}
        for name, p in module._parameters.items():
            value = perturb(p) if p is not None and p in trainable else None
            if value is not None:
                saved[name] = p
                module._parameters[name] = value  # type: ignore[assignment]
        return saved

    def restore(module: nn.Module, saved: dict[str, torch.Tensor]) -> None:
        module._parameters.update(saved)  # type: ignore[arg-type]

    handles, held = [], [(m, swap(m)) for m in whole]
    stack: dict[int, list[dict]] = {}
    try:
        for module in model.modules():
            if any(module is m for m in whole) or not any(p in trainable for p in module._parameters.values()
                                                          if p is not None):
                continue
            handles.append(module.register_forward_pre_hook(
                lambda m, args: stack.setdefault(id(m), []).append(swap(m))))
            handles.append(module.register_forward_hook(
                lambda m, args, out: restore(m, stack[id(m)].pop())))
        yield
    finally:
        for h in handles:
            h.remove()
        for m, saved in held:
            restore(m, saved)
        for module in model.modules():  # a forward that raised leaves its swap on the stack
            for saved in stack.get(id(module), []):
                restore(module, saved)


@OPTIMIZERS.register("zo", needs={"loss_closure"})  # the learner hands it a closure of the surrogate
def build_zo(params: Iterable, cfg) -> torch.optim.Optimizer:
    """Zeroth-order SPSA (MeZO-SGD): K = `zo_perturbations` perturbations of size `zo_eps` (docs/methods.md#zeroth-order-update)."""
    seed = int(torch.randint(0, 2**62, (1,)))  # from the run's seed (the learner seeds torch first)
    return ZerothOrder(params, lr=cfg.lr, eps=cfg.zo_eps, weight_decay=cfg.weight_decay,
                       perturbations=cfg.zo_perturbations, seed=seed)
