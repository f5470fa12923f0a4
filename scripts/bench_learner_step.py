"""The learner's step time on the embedded default's batch shape, with and without shared prompts, side by side.

    python scripts/bench_learner_step.py                       # 1 thread, writes docs/results/learner_step.*
    python scripts/bench_learner_step.py --threads 2 --repeats 20

The batch is the default step's: 32 prompts x 8 samples, prompts of 9 tokens (BOS + "123+456="), responses of
`--response-tokens` tokens, right-padded; weights as GRPO-BA gives them. Each case is a fresh Learner
(the embedded 1.07M model, fp32 AdamW) timed over `--repeats` steps after `--warmup`, cases interleaved
round by round so a machine's drifting load falls on all of them; the table gives the median and the
spread (min-max) per case, and the ratio to the first case. Timings vary by ~10% between runs on an idle
2-core machine; the ratios hold better.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlft.config import resolve_config  # noqa: E402
from rlft.learner.learner import Learner  # noqa: E402
from rlft.learner.types import TrainBatch  # noqa: E402

CASES = {
    "whole rows, 64-row micro-batches (before)": ["learner.share_prompts=false", "learner.micro_batch_size=64"],
    "whole rows, 256-row micro-batches": ["learner.share_prompts=false"],
    "shared prompts, 64-row micro-batches": ["learner.micro_batch_size=64"],
    "shared prompts, 256-row micro-batches (default)": [],
}


def default_batch(prompts: int, group: int, prompt_tokens: int, response_tokens: int, vocab: int) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    n, width = prompts * group, prompt_tokens + response_tokens
    tokens = torch.randint(3, vocab, (n, width), generator=g)
    tokens[:, :prompt_tokens] = tokens[::group, :prompt_tokens].repeat_interleave(group, dim=0)  # a group's prompt
    lengths = torch.randint(1, response_tokens + 1, (n,), generator=g)  # ragged responses, right-padded
    cols = torch.arange(width)
    attention = cols < (prompt_tokens + lengths)[:, None]
    response = attention & (cols >= prompt_tokens)
    tokens[~attention] = 0
    per_token = 1.0 / float(response.sum())
    return TrainBatch(
        tokens=tokens, attention_mask=attention.long(), response_mask=response.float(),
        rollout_logprobs=-torch.rand(n, width, generator=g) * response, advantages=torch.randn(n, generator=g),
        weights=torch.full((n,), per_token), token_weights=torch.full((n,), per_token),
        minibatch=torch.zeros(n, dtype=torch.long),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (an async run's learner has 1 here)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--response-tokens", type=int, default=6)
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    learners = {name: Learner(resolve_config("grpo-ba", None, ["learner.device=cpu", *over]))
                for name, over in CASES.items()}
    vocab = next(iter(learners.values())).model.config.vocab_size
    batch = default_batch(32, 8, 9, args.response_tokens, vocab)
    times: dict[str, list[float]] = {name: [] for name in CASES}
    for r in range(args.warmup + args.repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.train_step(batch)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    first = statistics.median(times[next(iter(CASES))])
    rows = []
    print(f"learner step, embedded default batch (256 rows, 9 + <={args.response_tokens} tokens), {args.threads} thread(s)")
    print(f"| case | median s | min-max s | vs first |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"case": name, "overrides": CASES[name], "median_s": med, "min_s": min(ts), "max_s": max(ts),
                     "ratio": med / first})
        print(f"| {name} | {med:.3f} | {min(ts):.3f}-{max(ts):.3f} | {med / first:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["python", "scripts/bench_learner_step.py", *sys.argv[1:]]), "threads": args.threads,
              "repeats": args.repeats, "response_tokens": args.response_tokens, "cases": rows}
    (out / "learner_step.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [r["case"] for r in rows][::-1]
    meds = [r["median_s"] for r in rows][::-1]
    errs = [[r["median_s"] - r["min_s"] for r in rows][::-1], [r["max_s"] - r["median_s"] for r in rows][::-1]]
    ax.barh(names, meds, xerr=errs, color=["#4c72b0" if "shared" in n else "#999999" for n in names])
    ax.set_xlabel(f"learner step, s (median, min-max; {args.threads} thread)")
    ax.set_title("embedded default batch: 32 prompts x 8 samples")
    fig.tight_layout()
    fig.savefig(out / "learner_step.png", dpi=110)


if __name__ == "__main__":
    main()
