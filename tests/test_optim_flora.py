"""Flora (docs/methods.md#flora): seeded projections never stored, rank-r state, re-projection in r×r."""

import torch

from rlft.config import OptimConfig
from rlft.optim import build_optimizer
from rlft.optim.flora import next_seed, projection


def _stepped(shape, steps: int, kappa: int = 1000, rank: int = 4):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(shape))
    opt = build_optimizer([w], OptimConfig(name="flora", lr=1e-3, flora_rank=rank, flora_kappa=kappa))
    for _ in range(steps):
        w.grad = torch.randn(shape)
        opt.step()
    return w, opt


def test_flora_projection_is_a_pure_function_of_the_seed():
    q1, q2 = projection(123, 50, 4, torch.device("cpu")), projection(123, 50, 4, torch.device("cpu"))
    assert torch.equal(q1, q2) and q1.shape == (50, 4)
    assert not torch.equal(q1, projection(next_seed(123), 50, 4, torch.device("cpu")))
    big = projection(7, 4, 20000, torch.device("cpu"))  # E[Q Qᵀ] = I with entries ~ N(0, 1/r)
    assert torch.allclose(big @ big.T, torch.eye(4), atol=0.05)


def test_flora_state_is_rank_r_times_larger_side_and_holds_no_projection():
    w, opt = _stepped((30, 70), steps=2)
    state = opt.state[w]
    assert state["exp_avg_proj"].shape == (4, 70)  # the smaller side (30) is projected
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    assert set(tensors) == {"exp_avg_proj", "v_row", "v_col"}
    assert isinstance(state["seed"], int)
    w2, opt2 = _stepped((70, 30), steps=1)
    assert opt2.state[w2]["exp_avg_proj"].shape == (70, 4)


def test_flora_keeps_fp32_adamw_moments_for_vectors_and_thin_matrices():
    v = torch.nn.Parameter(torch.randn(100))
    thin = torch.nn.Parameter(torch.randn(3, 100))  # min side <= rank: nothing to compress
    opt = build_optimizer([v, thin], OptimConfig(name="flora", flora_rank=4))
    v.grad, thin.grad = torch.randn_like(v), torch.randn_like(thin)
    opt.step()
    assert opt.state[v]["exp_avg"].shape == (100,) and opt.state[thin]["exp_avg_sq"].shape == (3, 100)


def test_flora_reprojection_equals_up_with_old_then_down_with_new_projection():
    """Every kappa steps M <- M (Q_oldᵀ Q_new): the r×r shortcut of down_new(up_old(M))."""
    for shape in [(40, 24), (24, 40)]:
        w, opt = _stepped(shape, steps=2, kappa=2)  # the re-projection happens at step 3
        state = opt.state[w]
        seed, m_old = state["seed"], state["exp_avg_proj"].clone()
        g = torch.randn(shape)
        w.grad = g.clone()
        opt.step()
        assert state["seed"] == next_seed(seed)
        q_old, q_new = (projection(s, min(shape), 4, torch.device("cpu")) for s in (seed, state["seed"]))
        if shape[0] >= shape[1]:
            full = m_old @ q_old.T  # up: [40, 24]
            expected = 0.9 * (full @ q_new) + 0.1 * (g @ q_new)
        else:
            full = q_old @ m_old
            expected = 0.9 * (q_new.T @ full) + 0.1 * (q_new.T @ g)
        assert torch.allclose(state["exp_avg_proj"], expected, atol=1e-5)
