"""Time rlft's Triton kernels against their torch paths on a CUDA GPU (and check they agree there).

    python scripts/bench_kernels.py                  # prints a table, writes bench/kernels.json
    python scripts/bench_kernels.py --out /tmp/b --vocab 32768 151936 --tokens 8192

Rows: the 4-bit AdamW step (rlft/optim/kernels.py vs rlft.optim.quant4.step_quantized, and torch's
fused fp32 AdamW for scale) per state layout; the fused log-prob forward and forward+backward
(Triton vs the chunked torch path vs plain full logits), with peak memory; the log-prob's
elementwise gradient kernel. Times are medians of triton.testing.do_bench (ms). On a machine
without CUDA or Triton it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=50, return_mode="median")


def bench_adamw4bit(args) -> list[dict]:
    from rlft.optim import kernels, quant4
    from rlft.optim.adamw4bit import AdamW4bit

    rows = []
    cases = [("rank-1 v", (args.matrix, args.matrix), False), ("factored v", (args.matrix, args.matrix), True),
             ("blockwise v (1-D)", (args.matrix * args.matrix,), False)]
    for label, shape, factor in cases:
        p = torch.nn.Parameter(torch.randn(shape, device="cuda", dtype=torch.bfloat16))
        opt = AdamW4bit([p], lr=1e-4, min_numel=0, factor_second_moment=factor)
        p.grad = torch.randn_like(p)
        opt.step()  # builds the 4-bit state
        state, grad = opt.state[p], p.grad
        hp = quant4.hyperparams(opt.param_groups[0], 2)
        snapshot = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
        ref_p, ref_state = p.detach().clone(), {k: v.clone() if torch.is_tensor(v) else v for k, v in snapshot.items()}
        quant4.step_quantized(ref_p, grad, ref_state, hp, 128)
        got_p = p.detach().clone()
        kernels.step_quantized_triton(got_p, grad, state, hp, 128)
        diff = (got_p.float() - ref_p.float()).abs().max().item()
        t_triton = _bench(lambda: kernels.step_quantized_triton(p.data, grad, state, hp, 128))
        t_torch = _bench(lambda: quant4.step_quantized(p.data, grad, state, hp, 128))
        ref = torch.nn.Parameter(torch.randn(shape, device="cuda", dtype=torch.bfloat16))
        ref.grad = torch.randn_like(ref)
        fused_adamw = torch.optim.AdamW([ref], lr=1e-4, fused=True)
        t_fp32 = _bench(fused_adamw.step)
        rows.append({"kernel": "adamw-4bit step", "case": f"{label} {list(shape)} bf16", "triton_ms": t_triton,
                     "torch_ms": t_torch, "speedup": t_torch / t_triton, "fp32_adamw_fused_ms": t_fp32,
                     "max_abs_diff": diff})
    return rows


def bench_logprob(args) -> list[dict]:
    from rlft.learner import fused_logprob as fl

    rows = []
    n, h = args.tokens, args.hidden
    for v in args.vocab:
        hidden = torch.randn(n, h, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        weight = (torch.randn(v, h, device="cuda") / h**0.5).to(torch.bfloat16).requires_grad_()
        targets = torch.randint(0, v, (n,), device="cuda")

        def plain():
            logits = (hidden @ weight.T).float()
            log_z = torch.logsumexp(logits, -1)
            lp = logits.gather(1, targets[:, None]).squeeze(1) - log_z
            return lp, log_z - (torch.softmax(logits, -1) * logits).sum(-1)

        paths = {
            "triton": lambda: fl.TritonLogprob.apply(hidden, weight, targets, 1.0, args.chunk, True),
            "torch-chunked": lambda: fl.ChunkedLogprob.apply(hidden, weight, targets, 1.0, args.chunk, True),
            "plain": plain,
        }
        ref = None
        for name, fn in paths.items():
            with torch.no_grad():
                t_fwd = _bench(fn)
                lp, _ = fn()
            ref = lp if ref is None else ref

            def fwd_bwd():
                lp, ent = fn()
                (lp.sum() + 0.01 * ent.sum()).backward()
                hidden.grad = weight.grad = None

            fwd_bwd()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fwd_bwd()
            peak = torch.cuda.max_memory_allocated() - base
            rows.append({"kernel": "log-prob + entropy", "case": f"{name} N={n} H={h} V={v} bf16",
                         "fwd_ms": t_fwd, "fwd_bwd_ms": _bench(fwd_bwd), "peak_MiB": peak / 2**20,
                         "max_abs_diff_vs_triton": (lp - ref).abs().max().item()})
        z = torch.randn(n, args.chunk, device="cuda")
        lse, mean_z = torch.logsumexp(z, 1), torch.zeros(n, device="cuda")
        g = torch.randn(n, device="cuda")
        t_k = _bench(lambda: fl.logit_grad_triton(z.clone(), targets, 0, lse, mean_z, g, g, 1.0))
        t_t = _bench(lambda: fl.logit_grad_torch(z.clone(), targets, 0, lse, mean_z, g, g, 1.0))
        rows.append({"kernel": "logit gradient (elementwise)", "case": f"[{n}, {args.chunk}] fp32, with clone",
                     "triton_ms": t_k, "torch_ms": t_t, "speedup": t_t / t_k})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench")
    p.add_argument("--matrix", type=int, default=4096, help="4-bit step: side of the square parameter")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=1536)
    p.add_argument("--vocab", type=int, nargs="+", default=[32768, 151936])
    p.add_argument("--chunk", type=int, default=8192)
    args = p.parse_args()
    from rlft.optim.kernels import HAS_TRITON

    if not (torch.cuda.is_available() and HAS_TRITON):
        print("bench_kernels: needs a CUDA GPU and Triton; nothing to time here "
              "(CPU correctness of the kernels: pytest tests/test_kernels.py, under TRITON_INTERPRET=1)")
        return
    rows = bench_adamw4bit(args) + bench_logprob(args)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda x: f"{x:.4g}" if isinstance(x, float) else str(x)  # noqa: E731
    cells = [[fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                                  "args": vars(args), "rows": rows}, indent=2))
    print(f"wrote {out / 'kernels.json'}")


if __name__ == "__main__":
    main()
