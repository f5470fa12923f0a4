"""The end of a run: a readable summary on the terminal and a PNG of the curves in the run folder."""

from __future__ import annotations

import json
from pathlib import Path


def format_summary(summary: dict) -> str:
    """The summary as a few aligned lines, accuracy first."""
    first, last, best = summary["initial_accuracy"], summary["final_accuracy"], summary["best_accuracy"]
    mem = summary["peak_memory_mb"]
    lines = [
        "rlft summary",
        f"  held-out accuracy   {first:.1%} -> {last:.1%} ({(last - first) * 100:+.1f} points; best {best:.1%} "
        f"at step {summary['best_step']})",
        f"  steps               {summary['steps']} ({summary['samples']} samples, "
        f"{summary['tokens_generated']} tokens generated)",
        f"  time                {summary['wall_seconds']:.0f} s wall, {summary['train_seconds']:.0f} s in training steps",
        f"  peak memory         learner {mem['learner']} MiB, rollout {mem['rollout']} MiB, reward {mem['reward']} MiB",
        f"  run folder          {summary['run_dir']}  (summary.json, metrics.jsonl, curves.png, checkpoints/)",
    ]
    return "\n".join(lines)


def plot_curves(run_dir: Path) -> Path | None:
    """curves.png: held-out accuracy and training reward against the step; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    evals = [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]
    rewards = [(r["step"], r["reward/mean"]) for r in records if "reward/mean" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    if rewards:
        ax.plot(*zip(*rewards), color="0.7", linewidth=0.8, label="train reward (sampled)")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="held-out accuracy")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(run_dir.name)
    fig.tight_layout()
    path = run_dir / "curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
