"""How reproducible is a seeded run? Short runs of the default config, compared metric by metric.

    python scripts/check_determinism.py                      # 6 steps: 2 runs at 2 torch threads, 1 at 1 thread
    python scripts/check_determinism.py --steps 10 --threads 1 1 2 4 --runs-dir /tmp/det   # keep (and reuse) runs

Each run goes through `python -m rlft.train` in its own process (a fresh Ray), with the same seed and
config except `ray.torch_threads`. For every pair of runs the table gives the first step at which any
of the metrics below differs, and the largest difference of each over the steps. Writes
OUT/determinism.json and .png (reward/mean per step for each run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ["reward/mean", "learner/pg_loss", "learner/grad_norm", "learner/entropy", "response/length_mean",
           "rollout/decode_steps", "eval/accuracy"]
TIMING = ("time/", "throughput/", "reward/time_s")  # wall-clock measurements differ in every run


def run(out: Path, name: str, threads: int, steps: int, overrides: list[str]) -> dict[int, dict]:
    """One training run in a subprocess (skipped when OUT/NAME already holds a finished one); its records by step."""
    if not (out / name / "summary.json").exists():
        cmd = [sys.executable, "-m", "rlft.train", "--algo", "grpo-ba", f"train.steps={steps}",
               f"train.eval_every={max(1, steps // 2)}", "train.save_every=0", "train.progress=false",
               f"ray.torch_threads={threads}", f"train.output_dir={out}", f"train.run_name={name}", *overrides]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    records: dict[int, dict] = {}
    for line in (out / name / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records.setdefault(record["step"], {}).update(record)
    return records


def compare(a: dict[int, dict], b: dict[int, dict]) -> dict:
    """First step where any metric differs, each listed metric's largest absolute difference, and every
    non-timing metric that differs at some step."""
    first, largest = None, {m: 0.0 for m in METRICS}
    differing = sorted({k for step in set(a) & set(b) for k in a[step]
                        if not k.startswith(TIMING) and a[step][k] != b[step].get(k)})
    for step in sorted(set(a) & set(b)):
        for m in METRICS:
            if m in a[step] and m in b[step]:
                diff = abs(a[step][m] - b[step][m])
                largest[m] = max(largest[m], diff)
                if diff and first is None:
                    first = step
    return {"first_differing_step": first, "max_abs_diff": largest, "differing_metrics": differing}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 2, 1], help="ray.torch_threads of each run")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--runs-dir", help="keep the run folders here (a finished run is read back, not rerun)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. data.eval_size=100")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.runs_dir or tmp)
        runs = {f"run{i}-threads{t}": run(folder, f"run{i}-threads{t}", t, args.steps, args.overrides)
                for i, t in enumerate(args.threads)}
    pairs = {f"{x} vs {y}": compare(runs[x], runs[y]) for x, y in combinations(runs, 2)}
    print(f"{'pair':32s} {'first diff':>10s} " + " ".join(f"{m:>22s}" for m in METRICS))
    for pair, result in pairs.items():
        print(f"{pair:32s} {str(result['first_differing_step']):>10s} "
              + " ".join(f"{result['max_abs_diff'][m]:22.3g}" for m in METRICS))
        print(f"{'':32s} differing (timings aside): {', '.join(result['differing_metrics']) or 'none'}")
    result = {"command": "python scripts/check_determinism.py " + " ".join(argv), "steps": args.steps,
              "threads": args.threads, "pairs": pairs,
              "runs": {name: {str(s): {m: r.get(m) for m in METRICS if m in r} for s, r in rec.items()}
                       for name, rec in runs.items()}}
    (out / "determinism.json").write_text(json.dumps(result, indent=2))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, rec in runs.items():
        steps = [s for s in sorted(rec) if "reward/mean" in rec[s]]
        ax.plot(steps, [rec[s]["reward/mean"] for s in steps], marker="o", label=name, alpha=0.7)
    ax.set_xlabel("step")
    ax.set_ylabel("reward/mean")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "determinism.png", dpi=100)
    print(f"wrote {out / 'determinism.json'} and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
