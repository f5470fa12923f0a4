"""Every Triton kernel against its torch reference, on CPU under TRITON_INTERPRET=1 (tiny sizes: it is slow).

Triton's own library functions are decorated when triton is first imported, so interpreter mode
must be on before that: `test_kernels_under_triton_interpreter` reruns this file in a child
pytest with TRITON_INTERPRET=1, where the other tests run (in this process they are skipped).

Tolerances: the interpreter computes in numpy fp32 with the same operation order as the torch
references, so 4-bit codes must agree exactly except at rounding ties (we allow 1 % of codes one
step apart) and floats to a few ulp (atol 1e-6 on fp32 parameters, rtol 1e-5 on scales; bf16
parameters within one bf16 ulp, as the interpreter rounds toward zero where GPUs round to nearest). The
fused log-prob forward sums the matmul in another order (tiles), so it gets rtol/atol 1e-5 (fp32).
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from rlft.optim import quant4  # noqa: E402

CHILD = os.environ.get("TRITON_INTERPRET") == "1"
in_child = pytest.mark.skipif(not CHILD, reason="runs in the TRITON_INTERPRET=1 child process")


@pytest.mark.skipif(CHILD, reason="this is the child")
def test_kernels_under_triton_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def interpreted():
    """rlft's Triton modules (imported here, inside the interpreter child)."""
    import rlft.learner.fused_logprob as fused
    import rlft.optim.kernels as kernels

    return kernels, fused


def _state_after_steps(shape, factor: bool, dtype=torch.float32, block: int = 32):
    """A parameter and its 4-bit state after two torch-path steps (non-trivial codes and scales)."""
    from rlft.optim.adamw4bit import AdamW4bit

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(shape).to(dtype))
    opt = AdamW4bit([p], lr=1e-2, weight_decay=0.1, min_numel=0, block_size=block, factor_second_moment=factor)
    for _ in range(2):
        p.grad = torch.randn(shape).to(dtype)
        opt.step()
    return p, opt


@in_child
@pytest.mark.parametrize(
    "shape, factor, dtype",
    [
        ((6, 64), False, torch.float32),  # rank-1 v, rows aligned with blocks (one atomic per block)
        ((7, 33), False, torch.float32),  # rank-1 v, blocks straddle rows, odd element count
        ((300,), False, torch.float32),  # 1-D: blockwise v
        ((9, 40), True, torch.float32),  # factored v
        ((6, 64), False, torch.bfloat16),  # bf16 parameter, fp32 state
    ],
)
def test_adamw4bit_kernel_equals_torch_step(interpreted, shape, factor, dtype):
    kernels, _ = interpreted
    p, opt = _state_after_steps(shape, factor, dtype)
    state = opt.state[p]
    state["step"] += 1
    hp = quant4.hyperparams(opt.param_groups[0], state["step"])
    ref_p, ref_state = p.detach().clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
    grad = torch.randn(shape).to(dtype)
    quant4.step_quantized(ref_p, grad, ref_state, hp, 32)
    kern_p = p.detach().clone()
    kernels.step_quantized_triton(kern_p, grad, state, hp, 32)

    if dtype == torch.float32:
        assert torch.allclose(kern_p, ref_p, rtol=0, atol=1e-6)
    else:  # the interpreter rounds fp32 -> bf16 toward zero (GPUs: to nearest even): one bf16 ulp apart at most
        assert torch.allclose(kern_p.float(), ref_p.float(), rtol=2**-7, atol=0)
    for key, ref in ref_state.items():
        got = state[key]
        if key.endswith("codes"):
            assert (quant4._unpack(got, p.numel()) != quant4._unpack(ref, p.numel())).float().mean() <= 0.01, key
        elif torch.is_tensor(ref):
            assert torch.allclose(got, ref, rtol=1e-5, atol=0), key


def _logprob_inputs(n=20, h=40, v=100, dtype=torch.float32):
    torch.manual_seed(0)
    hidden = torch.randn(n, h, dtype=dtype, requires_grad=True)
    weight = (torch.randn(v, h, dtype=dtype) * 2 / h**0.5).requires_grad_()  # logits of a few units
    return hidden, weight, torch.randint(0, v, (n,))


@in_child
@pytest.mark.parametrize("with_entropy, dtype", [(True, torch.float32), (False, torch.float32), (True, torch.float16)])
def test_fused_logprob_kernels_equal_torch_path(interpreted, with_entropy, dtype):
    """Forward kernel vs the chunked torch path; backward (elementwise kernel) gradients likewise.

    No bf16 case: the interpreter multiplies bf16 bit patterns in tl.dot (triton-lang/triton#11584);
    scripts/bench_kernels.py checks bf16 on a GPU. fp16: the torch path rounds logits to fp16, the
    kernel keeps them in fp32, hence atol 1e-2.
    """
    _, fused = interpreted
    hidden, weight, targets = _logprob_inputs(dtype=dtype)
    g_lp, g_ent = torch.randn(20), torch.randn(20)
    results = []
    # Triton: 3 vocabulary splits of 48 (3 tiles of 16; the last split ragged) and 2 row blocks of 16
    for fn, extra in ((fused.ChunkedLogprob.apply, ()), (fused.TritonLogprob.apply, ((16, 16, 16), 3))):
        lp, ent = fn(hidden, weight, targets, 0.7, 48, with_entropy, *extra)
        loss = (lp * g_lp).sum() + ((ent * g_ent).sum() if with_entropy else 0)
        results.append((lp, ent, *torch.autograd.grad(loss, (hidden, weight))))
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for ref, got in zip(*results):
        assert torch.allclose(got.float(), ref.float(), rtol=tol, atol=tol)


@in_child
def test_logit_grad_kernel_equals_torch_reference(interpreted):
    _, fused = interpreted
    torch.manual_seed(0)
    n, c, start = 33, 70, 50
    z = torch.randn(n, c)
    targets = torch.randint(0, 150, (n,))  # some rows' targets fall in this chunk [50, 120)
    lse, mean_z = torch.logsumexp(z, 1) + 1.0, torch.randn(n)
    g_lp, g_ent = torch.randn(n), torch.randn(n)
    for ent in (g_ent, None):
        ref = fused.logit_grad_torch(z.clone(), targets, start, lse, mean_z, g_lp, ent, 0.7)  # both write over z
        got = fused.logit_grad_triton(z.clone(), targets, start, lse, mean_z, g_lp, ent, 0.7)
        assert torch.allclose(got, ref, rtol=1e-6, atol=1e-7)
