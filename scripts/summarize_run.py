"""A finished run folder as a results table: held-out accuracy and answer format before/after, time split, memory.

    python scripts/summarize_run.py runs/smollm2-grpo-ba --out docs/results/smollm2_grpo

Reads the run's summary.json and metrics.jsonl (written by rlft.train); prints a markdown table and
writes <out>.json, <out>.md and <out>.png (held-out accuracy and stated-answer share at the evaluated
steps; training reward, stated-answer share and response length per step; time per phase per step).
The answer-format columns need the `math_format` reward in the run (weight 0 logs it without using it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PHASES = ["time/rollout_s", "time/learner_step_s", "time/sync_s"]


def summarize(run_dir: Path) -> dict:
    """The figures of one run, from its summary.json and metrics.jsonl."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    merged: dict[int, dict] = {}
    for r in records:
        merged.setdefault(r["step"], {}).update(r)
    evals = [(s, r) for s, r in sorted(merged.items()) if "eval/accuracy" in r]
    steps = [r for s, r in sorted(merged.items()) if s > 0 and "reward/mean" in r]
    first, last = evals[0][1], evals[-1][1]
    fmt = "eval/reward/math_format"
    mean = lambda key: sum(r.get(key, 0.0) for r in steps) / max(len(steps), 1)  # noqa: E731
    return {
        "run_dir": str(run_dir),
        "steps": summary["steps"],
        "samples": summary["samples"],
        "held_out_accuracy": {"start": first["eval/accuracy"], "end": last["eval/accuracy"],
                              "points": 100 * (last["eval/accuracy"] - first["eval/accuracy"])},
        "held_out_stated_answer": {"start": first.get(fmt), "end": last.get(fmt)},
        "wall_seconds": summary["wall_seconds"],
        "train_seconds": summary["train_seconds"],
        "mean_step_seconds": {k.split("/")[1]: mean(k) for k in PHASES},
        "peak_memory_mb": summary["peak_memory_mb"],
        "curves": {
            "eval_steps": [s for s, _ in evals],
            "eval_accuracy": [r["eval/accuracy"] for _, r in evals],
            "eval_stated_answer": [r.get(fmt) for _, r in evals],
            "train_reward": [r["reward/mean"] for r in steps],
            "train_stated_answer": [r.get("reward/math_format") for r in steps],
            "response_length": [r.get("response/length_mean") for r in steps],
        },
    }


def table(res: dict) -> str:
    """The run as a markdown table."""
    acc, fmt, t, mem = res["held_out_accuracy"], res["held_out_stated_answer"], res["mean_step_seconds"], res["peak_memory_mb"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = [
        ("held-out accuracy", f"{pct(acc['start'])} -> {pct(acc['end'])} ({acc['points']:+.1f} points)"),
        ("held-out responses with a stated answer", f"{pct(fmt['start'])} -> {pct(fmt['end'])}"),
        ("steps (samples)", f"{res['steps']} ({res['samples']})"),
        ("wall time", f"{res['wall_seconds'] / 60:.1f} min ({res['train_seconds'] / 60:.1f} min in steps)"),
        ("mean step: rollout / learner / weight sync", " / ".join(f"{v:.0f} s" for v in t.values())),
        ("peak memory: learner / rollout / reward", f"{mem['learner']} / {mem['rollout']} / {mem['reward']} MiB"),
    ]
    return "\n".join(["| | |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = res["curves"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    x = list(range(1, len(c["train_reward"]) + 1))
    ax[0].plot(x, c["train_reward"], color="0.6", label="train reward (sampled)")
    if any(v is not None for v in c["train_stated_answer"]):
        ax[0].plot(x, c["train_stated_answer"], color="tab:green", alpha=0.6, label="train: stated answer")
    ax[0].plot(c["eval_steps"], c["eval_accuracy"], marker="o", color="tab:blue", label="held-out accuracy")
    if any(v is not None for v in c["eval_stated_answer"]):
        ax[0].plot(c["eval_steps"], c["eval_stated_answer"], marker="s", color="tab:green", label="held-out: stated answer")
    ax[0].set_ylim(0, 1)
    ax[0].set_xlabel("step")
    ax[0].legend(fontsize=7)
    ax[0].grid(alpha=0.3)
    ax[1].plot(x, c["response_length"], color="tab:orange")
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("mean response length (tokens)")
    ax[1].grid(alpha=0.3)
    fig.suptitle(Path(res["run_dir"]).name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", required=True, help="path prefix of the .json/.md/.png written")
    args = p.parse_args()
    res = summarize(Path(args.run_dir))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    text = table(res)
    out.with_suffix(".md").write_text(text + "\n")
    plot(res, out.with_suffix(".png"))
    print(text)


if __name__ == "__main__":
    main()
