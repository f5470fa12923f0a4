"""Learning per step on the embedded default: synchronous, one-step off-policy, and off-policy after on-policy
first steps (`train.on_policy_steps`), over seeds, held-out accuracy every 10 steps.

    python scripts/compare_staleness.py                      # 4 settings x seeds 0-4, 100 steps (~40 min on 2 cores)
    python scripts/compare_staleness.py --settings sync async --seeds 0 1 --workdir /tmp/staleness

Every setting runs `python -m rlft.train --algo grpo-ba` with the embedded default's settings, 100 steps, greedy
accuracy on the 500 held-out problems every 10 steps. Accuracy curves are deterministic for a seed and setting
(the async queue draws step j from the weights after update j - 1 - staleness whatever the timing), so runs may
share a busy machine; their times are not used. Reports, per setting and seed: the mean accuracy over the evals
at steps 10-40 (early learning) and 10-100, and the step at which the 5-eval trailing mean (the first window
holding the step-0 eval, as bench_vs_trl's time to +N) first reaches +10 and +20 points. The +20 level sits
just under the plateau (~0.60), so its step moves by 10-50 steps with one eval's noise (~0.02 on 500
problems); the means are the steadier measure. Writes <out>/staleness.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from bench_vs_trl import time_to_gain  # noqa: E402

SETTINGS = {
    "sync": [],
    "async": ["train.mode=async", "algo.tis_cap=2.0"],
    "async, 10 on-policy steps": ["train.mode=async", "algo.tis_cap=2.0", "train.on_policy_steps=10"],
    "async, 20 on-policy steps": ["train.mode=async", "algo.tis_cap=2.0", "train.on_policy_steps=20"],
}
SHORT = {"sync": "sync", "async": "async", "async, 10 on-policy steps": "w10", "async, 20 on-policy steps": "w20"}


def run(setting: str, seed: int, steps: int, workdir: Path) -> list[tuple[int, float]]:
    """(step, accuracy) of one run; a finished run folder in `workdir` is read, not run again."""
    out = workdir / f"{SHORT[setting]}-{seed}"
    metrics = out / "run" / "metrics.jsonl"
    if not (out / "run" / "summary.json").is_file():
        cmd = [sys.executable, "-m", "rlft.train", "--algo", "grpo-ba", f"train.steps={steps}", "train.eval_every=10",
               "data.eval_size=500", "train.save_every=0", "train.progress=false", f"train.seed={seed}",
               f"train.output_dir={out}", "train.run_name=run", *SETTINGS[setting]]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [(r["step"], r["eval/accuracy"]) for r in records if "eval/accuracy" in r]


def step_to_gain(evals: list[tuple[int, float]], gain: float) -> int | None:
    """The step at which bench_vs_trl's time to +N points is reached (`gain` as a fraction: 0.2 is +20 points)."""
    return time_to_gain([{"accuracy": a, "train_s": step} for step, a in evals], 100 * gain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workdir", default="/tmp/rlft-staleness", help="run folders (finished ones are reused)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    args = parser.parse_args()
    workdir = Path(args.workdir)
    results: dict[str, dict] = {}
    for setting in args.settings:
        per_seed = {}
        for seed in args.seeds:
            evals = run(setting, seed, args.steps, workdir)
            acc = [a for s, a in evals if s > 0]
            per_seed[str(seed)] = {"evals": evals, "mean_10_40": statistics.mean(acc[:4]), "mean_all": statistics.mean(acc),
                                   "step_to_+10": step_to_gain(evals, 0.10), "step_to_+20": step_to_gain(evals, 0.20)}
            print(f"{setting} seed {seed}: steps 10-40 {per_seed[str(seed)]['mean_10_40']:.3f}", flush=True)
        results[setting] = {"overrides": SETTINGS[setting], "seeds": per_seed,
                            "mean_10_40": statistics.mean(r["mean_10_40"] for r in per_seed.values()),
                            "mean_all": statistics.mean(r["mean_all"] for r in per_seed.values())}
    lines = ["| setting | acc. steps 10-40, per seed | mean | acc. steps 10-100, mean | step to +20 (5-eval mean), per seed |",
             "|---|---|---|---|---|"]
    for setting, r in results.items():
        seeds = r["seeds"].values()
        early = " ".join(f"{s['mean_10_40']:.3f}" for s in seeds)
        to_20 = " ".join(str(s["step_to_+20"]) for s in seeds)
        lines.append(f"| {setting} | {early} | {r['mean_10_40']:.3f} | {r['mean_all']:.3f} | {to_20} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "staleness.json").write_text(json.dumps({"steps": args.steps, "seeds": args.seeds, "results": results}, indent=1))
    (out / "staleness.md").write_text(text + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (setting, r) in enumerate(results.items()):
        curves = [s["evals"] for s in r["seeds"].values()]
        steps = [s for s, _ in curves[0]]
        mean = [statistics.mean(c[k][1] for c in curves) for k in range(len(steps))]
        ax.plot(steps, mean, marker="o", color=f"C{i}", label=f"{setting} (mean of {len(curves)} seeds)")
        for c in curves:
            ax.plot(steps, [a for _, a in c], color=f"C{i}", alpha=0.15)
    ax.set_xlabel("step")
    ax.set_ylabel("held-out greedy accuracy (500 problems)")
    ax.set_title("embedded default: learning per step, sync vs async")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "staleness.png", dpi=120)


if __name__ == "__main__":
    main()
