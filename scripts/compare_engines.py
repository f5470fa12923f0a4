"""The default run on the built-in engine and on vLLM, back to back: accuracy, wall time, step-time split, memory.

    python scripts/compare_engines.py                         # the embedded default, 200 steps each
    python scripts/compare_engines.py --steps 20 --engines vllm

Each run is `python -m rlft.train --algo grpo-ba rollout.engine=<engine>` (through Ray) in its own process.
Reads each run's summary.json and metrics.jsonl; prints a table, writes <out>/engines.json and .png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(engine: str, steps: int, out_dir: Path, extra: list[str]) -> dict:
    name = f"{engine}-{time.strftime('%H%M%S')}"
    cmd = [sys.executable, "-m", "rlft.train", "--algo", "grpo-ba", f"rollout.engine={engine}", f"train.steps={steps}",
           f"train.output_dir={out_dir}", f"train.run_name={name}", "train.progress=false", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    run_dir = out_dir / name
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps_rec = [r for r in records if "time/step_s" in r]
    mean = lambda key: sum(r[key] for r in steps_rec) / len(steps_rec)  # noqa: E731
    return {
        "command": " ".join(cmd[1:]), "process_wall_s": wall, "summary": summary,
        "accuracy_gain_points": 100 * (summary["final_accuracy"] - summary["initial_accuracy"]),
        "mean_step_s": {k: mean(f"time/{k}") for k in ("rollout_s", "reward_s", "learner_step_s", "sync_s", "step_s")},
        "curve": [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--engines", nargs="+", default=["builtin", "vllm"], choices=["builtin", "vllm"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--runs-dir", default="runs/compare_engines")
    p.add_argument("--out", default="bench")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for both runs")
    args = p.parse_args(argv)
    results = {e: run(e, args.steps, Path(args.runs_dir), args.overrides) for e in args.engines}
    head = (f"{'engine':<8} {'accuracy':>16} {'gain':>6} {'wall s':>7} {'rollout s':>9} {'learner s':>9} "
            f"{'sync s':>7} {'peak MiB learner/rollout/reward':>32}")
    print(head)
    print("-" * len(head))
    for e, r in results.items():
        s, t, m = r["summary"], r["mean_step_s"], r["summary"]["peak_memory_mb"]
        print(f"{e:<8} {s['initial_accuracy']:>7.3f} -> {s['final_accuracy']:.3f} {r['accuracy_gain_points']:>+6.1f} "
              f"{s['wall_seconds']:>7.0f} {t['rollout_s']:>9.3f} {t['learner_step_s']:>9.3f} {t['sync_s']:>7.3f} "
              f"{m['learner']:>12}/{m['rollout']}/{m['reward']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": " ".join(sys.argv), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
              "note": "runs back to back in one command: compare within the report (times vary between machines and "
                      "runs); time/*_s are per-step means",
              "results": results}
    (out / "engines.json").write_text(json.dumps(report, indent=1))
    plot(results, out / "engines.png")
    print(f"wrote {out / 'engines.json'} and {out / 'engines.png'}")
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for e, r in results.items():
        axes[0].plot(*zip(*r["curve"]), marker="o", label=e)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("held-out accuracy")
    axes[0].legend()
    parts = ["rollout_s", "reward_s", "learner_step_s", "sync_s"]
    bottom = [0.0] * len(results)
    for part in parts:
        values = [r["mean_step_s"][part] for r in results.values()]
        axes[1].bar(list(results), values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values)]
    axes[1].set_ylabel("seconds per step")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
