"""The learner's step time on a benchmark's batch shape, ways of running it side by side.

    python scripts/bench_learner_step.py                       # 1 thread, writes docs/results/learner_step.*
    python scripts/bench_learner_step.py --threads 2 --repeats 20
    python scripts/bench_learner_step.py --shape rollout-heavy --repeats 5   # -> learner_step_rollout_heavy.*

Shapes:
- `default`: the embedded default step's batch: 32 prompts x 8 samples, prompts of 9 tokens (BOS + "123+456="),
  responses of 1 to `--response-tokens` tokens, right-padded; the embedded 1.07M model. Cases: whole rows in 64-
  or 256-row micro-batches, or packed groups (a prompt once, its responses after it: rlft.learner.packing), in
  fp32 or under `learner.autocast=bfloat16` (bf16 matmuls on AMX, attention kept in fp32 on a CPU:
  rlft.learner.attention).
- `rollout-heavy`: bench_vs_trl's rollout-heavy batch: the random ~31M Qwen2, 4 prompts x 4 samples, prompts of
  20 tokens, responses of 1 to 256 tokens (geometric, mean ~110, as a random model's end-of-text draws give).
  Cases: whole rows in micro-batches of contiguous rows (how the learner cut them before) or of rows of similar
  length (rlft.learner.micro_batches), or packed groups cut the same way (the default).
Weights are as GRPO-BA gives them. Each case is a fresh Learner (fp32 AdamW) timed over `--repeats` steps after
`--warmup`, cases interleaved round by round so a machine's drifting load falls on all of them; the table gives
the median and the spread (min-max) per case, and the ratio to the first case. Timings vary by ~10% between runs
on an idle 2-core machine; the ratios hold better.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rlft.config import resolve_config  # noqa: E402
from rlft.learner.learner import Learner  # noqa: E402
from rlft.learner.types import TrainBatch  # noqa: E402

CASES = {
    "default": {
        "whole rows, 64-row micro-batches (before)": ["learner.share_prompts=false", "learner.micro_batch_size=64"],
        "whole rows, 256-row micro-batches": ["learner.share_prompts=false"],
        "packed groups (default)": [],
        "packed groups, bf16 autocast": ["learner.autocast=bfloat16"],
    },
    "rollout-heavy": {
        "contiguous whole rows (before)": ["learner.share_prompts=false"],
        "whole rows of similar length": ["learner.share_prompts=false"],
        "packed groups (default)": [],
    },
}


def contiguous_micro_batches(attention_mask: torch.Tensor, max_rows: int, max_tokens: int | None) -> list[slice]:
    """How the learner cut micro-batches before rlft.learner.micro_batches: consecutive rows, each slice grown
    while rows x its longest row stays within `max_tokens` (kept here as the baseline)."""
    lengths = attention_mask.sum(dim=1).tolist()
    slices, start, width = [], 0, 0
    for i, length in enumerate(lengths):
        grown = max(width, int(length))
        if i > start and (i - start + 1 > max_rows or (max_tokens is not None and (i - start + 1) * grown > max_tokens)):
            slices.append(slice(start, i))
            start, grown = i, int(length)
        width = grown
    return slices + [slice(start, len(lengths))] if lengths else slices


def default_batch(prompts: int, group: int, prompt_tokens: int, response_tokens: int, vocab: int,
                  geometric_mean: float | None = None) -> TrainBatch:
    """Right-padded rows, a group's prompt repeated; response lengths uniform in 1..response_tokens or (with
    `geometric_mean`) geometric with that mean, capped at response_tokens."""
    g = torch.Generator().manual_seed(0)
    n, width = prompts * group, prompt_tokens + response_tokens
    tokens = torch.randint(3, vocab, (n, width), generator=g)
    tokens[:, :prompt_tokens] = tokens[::group, :prompt_tokens].repeat_interleave(group, dim=0)  # a group's prompt
    if geometric_mean is None:
        lengths = torch.randint(1, response_tokens + 1, (n,), generator=g)
    else:
        draws = -torch.log(torch.rand(n, generator=g)) * geometric_mean
        lengths = (draws.long() + 1).clamp(max=response_tokens)
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
    parser.add_argument("--shape", choices=list(CASES), default="default")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (an async run's learner has 1 here)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--response-tokens", type=int, default=6)
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = CASES[args.shape]
    model = []
    if args.shape == "rollout-heavy":
        sys.path.insert(0, str(REPO / "scripts"))
        from bench_vs_trl import build_random_model

        model = [f"model.path={build_random_model(Path(tempfile.gettempdir()) / 'rlft-bench-random-31m')}"]
    learners = {name: Learner(resolve_config("grpo-ba", None, ["learner.device=cpu", *model, *over]))
                for name, over in cases.items()}
    if args.shape == "rollout-heavy":
        before = learners["contiguous whole rows (before)"]
        ln = before.cfg.learner
        before._micro_batches = lambda b: contiguous_micro_batches(b.attention_mask, ln.micro_batch_size,
                                                                   ln.max_tokens_per_micro_batch)
    vocab = next(iter(learners.values())).model.config.vocab_size
    batch = (default_batch(32, 8, 9, args.response_tokens, vocab) if args.shape == "default"
             else default_batch(4, 4, 20, 256, vocab, geometric_mean=128.0))
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.warmup + args.repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.train_step(batch)
            if r >= args.warmup:
                times[name].append(time.perf_counter() - start)
    first = statistics.median(times[next(iter(cases))])
    rows = []
    tokens, padded = int(batch.attention_mask.sum()), batch.attention_mask.numel()
    title = (f"embedded default batch (256 rows, 9 + <={args.response_tokens} tokens)" if args.shape == "default"
             else f"rollout-heavy batch (16 rows, 20 + 1..256 tokens: {tokens} real, {padded} padded to the longest)")
    print(f"learner step, {title}, {args.threads} thread(s)")
    print(f"| case | median s | min-max s | vs first |\n|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"case": name, "overrides": cases[name], "median_s": med, "min_s": min(ts), "max_s": max(ts),
                     "ratio": med / first})
        print(f"| {name} | {med:.3f} | {min(ts):.3f}-{max(ts):.3f} | {med / first:.2f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "learner_step" if args.shape == "default" else "learner_step_rollout_heavy"
    result = {"command": " ".join(["python", "scripts/bench_learner_step.py", *sys.argv[1:]]), "shape": args.shape,
              "batch_tokens": tokens, "batch_padded_tokens": padded, "threads": args.threads,
              "repeats": args.repeats, "response_tokens": args.response_tokens, "cases": rows}
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    names = [r["case"] for r in rows][::-1]
    meds = [r["median_s"] for r in rows][::-1]
    errs = [[r["median_s"] - r["min_s"] for r in rows][::-1], [r["max_s"] - r["median_s"] for r in rows][::-1]]
    ax.barh(names, meds, xerr=errs, color=["#999999" if "before" in n or "whole" in n else "#4c72b0" for n in names])
    ax.set_xlabel(f"learner step, s (median, min-max; {args.threads} thread)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{stem}.png", dpi=110)


if __name__ == "__main__":
    main()
