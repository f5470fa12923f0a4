"""What rlft's optimizers share: the AdamW step loop, exact state save/load, state size, moment rescaling."""

from __future__ import annotations

from itertools import chain

import torch

from rlft.optim import quant4

# state key -> which moment it scales linearly with (RefLoRA-S rescales moments, docs/methods.md#adapters).
# Rank-1 scales: min(rowmax, colmax) scales with both. Factored v: row/mean(row) is scale-free,
# so the column statistics carry the factor.
_MOMENT_KEYS = {
    "exp_avg": "m", "exp_avg_proj": "m", "m_scale": "m",
    "exp_avg_sq": "v", "v_scale": "v", "v_rowmax": "v", "v_colmax": "v", "v_col": "v",
}


class ExactStateMixin:
    """Keeps every state tensor's dtype on load_state_dict, so a resumed run continues bitwise.

    torch's Optimizer.load_state_dict casts floating state to the parameter's dtype, which would
    turn fp32 quantization scales of a bf16 model into bf16.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)  # type: ignore[attr-defined]
        by_id = dict(zip(saved_ids, params))
        for idx, saved in state_dict["state"].items():
            p = by_id[idx]
            self.state[p] = {  # type: ignore[attr-defined]
                k: v.detach().clone().to(p.device) if torch.is_tensor(v) else v for k, v in saved.items()
            }


class CompactAdamW(ExactStateMixin, torch.optim.Optimizer):
    """AdamW whose subclasses store some tensors' moments compactly (4-bit, projected, factored).

    Tensors for which `_init_state` leaves fp32 `exp_avg`/`exp_avg_sq` take torch's AdamW step;
    the others go to `_compact_step`. `step` in the state is a Python int (1-based after a step).
    """

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float, weight_decay: float):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _init_state(self, p: torch.Tensor, index: int, state: dict) -> None:
        raise NotImplementedError

    def _compact_step(self, p: torch.Tensor, grad: torch.Tensor, state: dict, hp: dict) -> None:
        raise NotImplementedError

    @staticmethod
    def _fp32_moments(p: torch.Tensor, state: dict) -> None:
        state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
        state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = 0  # position of the parameter across groups: a stable per-tensor id
        for group in self.param_groups:
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    self._init_state(p, index, state)
                state["step"] += 1
                hp = quant4.hyperparams(group, state["step"])
                if "exp_avg" in state:
                    g = p.grad.float()
                    state["exp_avg"].mul_(hp["beta1"]).add_(g, alpha=1 - hp["beta1"])
                    state["exp_avg_sq"].mul_(hp["beta2"]).addcmul_(g, g, value=1 - hp["beta2"])
                    quant4.adamw_apply(p, state["exp_avg"], state["exp_avg_sq"], hp)
                else:
                    self._compact_step(p, p.grad, state, hp)
        return loss


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's state tensors (moments, codes, scales, step counters)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


@torch.no_grad()
def scale_moments(optimizer: torch.optim.Optimizer, param: torch.Tensor, m_factor: float, v_factor: float) -> None:
    """Multiply param's Adam first moment by m_factor and second moment by v_factor (> 0), any rlft optimizer."""
    state = optimizer.state.get(param)
    for key, value in (state or {}).items():
        if key in _MOMENT_KEYS and torch.is_tensor(value):
            value.mul_(m_factor if _MOMENT_KEYS[key] == "m" else v_factor)
