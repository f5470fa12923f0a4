"""Every memory-efficient optimizer still optimizes: a least-squares fit against fp32 AdamW's."""

import pytest
import torch

from rlft.config import OptimConfig
from rlft.optim import build_optimizer


def least_squares_loss(name: str, flora_rank: int = 8, steps: int = 150) -> tuple[float, float]:
    """(initial, final) loss of fitting W [64, 96] (quantized or compressed state) to a noisy linear map."""
    torch.manual_seed(0)
    x, target = torch.randn(256, 96), torch.randn(96, 64) / 10
    y = x @ target + 0.1 * torch.randn(256, 64)  # a non-zero optimum: no denormal slow-down near 0 loss
    w = torch.nn.Parameter(torch.zeros(64, 96))
    opt = build_optimizer([w], OptimConfig(name=name, lr=1e-2, flora_rank=flora_rank, flora_kappa=50))
    for _ in range(steps):
        loss = ((x @ w.T - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (y**2).mean().item(), loss.item()


@pytest.mark.parametrize("name", ["adamw-4bit", "adamw-4bit-factor"])
def test_4bit_adamw_fits_least_squares_like_fp32_adamw(name):
    start, final = least_squares_loss(name)
    assert final < 0.02 * start
    assert final < 1.1 * least_squares_loss("adamw")[1]



def test_flora_fits_least_squares():
    """Projection noise (about sqrt(side / r) times the signal) makes Flora slower than AdamW here, not divergent."""
    start, final = least_squares_loss("flora", flora_rank=32)
    assert final < 0.25 * start
