"""Where a run's CPU goes: cores used by each process of a training run (driver, learner, rollout and reward
workers, Ray's own), over its steady state, and the step time beside it.

    python scripts/bench_cpu_share.py                         # async default, 150 steps, 2 runs
    python scripts/bench_cpu_share.py --runs 3 --against /path/to/other/checkout   # alternate with another code
    python scripts/bench_cpu_share.py -- train.mode=sync      # overrides after `--` go to every run

Each run is `python -m rlft.train --algo grpo-ba train.mode=async algo.tis_cap=2.0 train.steps=<steps>
train.eval_every=0 <overrides>` in a subprocess; the CPU time (user + system) of every process in its tree is read
when the run's metrics reach step `--from-step` and again at `--to-step`, so start-up and the final evaluation
are left out. Cores = CPU seconds / wall seconds over that window; s/step = the window's wall seconds / its steps.
With `--against`, runs alternate between this checkout and the other one (same interpreter), so a shared
machine's drifting load falls on both alike: compare the two within one invocation. Writes <out>/cpu_share.json
and .png and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from bench_vs_trl import _role  # noqa: E402  (what a process of a run's tree is)


def last_step(run_root: Path) -> int:
    """The step of the newest metrics record of the run under `run_root` (0 before the first)."""
    files = list(run_root.glob("*/metrics.jsonl"))
    if not files:
        return 0
    lines = files[0].read_text().splitlines()
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError):
            continue  # a record being written
    return 0


def cpu_seconds(root) -> dict[int, tuple[str, float]]:
    """{pid: (role, user + system CPU seconds)} over `root` and its descendants."""
    import psutil

    out = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            out[proc.pid] = ("driver" if proc.pid == root.pid else _role(proc), times.user + times.system)
        except psutil.Error:
            continue
    return out


def one_run(repo: Path, steps: int, window: tuple[int, int], overrides: list[str]) -> dict:
    import psutil

    work = Path(tempfile.mkdtemp(prefix="rlft-cpu-share-"))
    cmd = [sys.executable, "-m", "rlft.train", "--algo", "grpo-ba", "train.mode=async", "algo.tis_cap=2.0",
           f"train.steps={steps}", "train.eval_every=0", f"train.output_dir={work}", "train.progress=false",
           *overrides]
    with open(work / "stderr.log", "w") as err:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=err)
    root = psutil.Process(proc.pid)
    marks = []
    for target in window:
        while last_step(work) < target:
            if proc.poll() is not None:
                raise SystemExit(f"the run ended before step {target} (exit {proc.returncode}); see {work}/stderr.log")
            time.sleep(0.05)
        marks.append((time.perf_counter(), last_step(work), cpu_seconds(root)))
    if proc.wait() != 0:
        raise SystemExit(f"run failed (exit {proc.returncode}); see {work}/stderr.log")
    (t0, s0, c0), (t1, s1, c1) = marks
    wall = t1 - t0
    cores: dict[str, float] = {}
    for pid, (role, seconds) in c1.items():
        used = seconds - c0.get(pid, (role, 0.0))[1]
        cores[role] = cores.get(role, 0.0) + used / wall
    return {"repo": str(repo), "command": " ".join(cmd), "window_steps": [s0, s1], "wall_s": wall,
            "step_s": wall / (s1 - s0), "cores": dict(sorted(cores.items(), key=lambda kv: -kv[1]))}


def plot(result: dict, path: Path) -> None:
    """Stacked bars of cores per process, one bar per checkout, the median step beside each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, window = result["summary"], result["window"]
    roles = [r for r in next(iter(summary.values()))["cores"] if max(s["cores"][r] for s in summary.values()) >= 0.005]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.6 * len(summary)))
    left = [0.0] * len(summary)
    for role in roles:
        widths = [s["cores"][role] for s in summary.values()]
        ax.barh(list(summary), widths, left=left, label=role)
        left = [a + b for a, b in zip(left, widths)]
    for y, s in enumerate(summary.values()):
        ax.text(left[y] + 0.02, y, f"{s['step_s_median']:.3f} s/step", va="center", fontsize=8)
    cores = int(result["machine"].split()[0])
    ax.set_xlabel(f"cores used (of {cores}), steps {window[0]}-{window[1]}")
    ax.set_xlim(0, cores + 0.6)
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.6))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs per checkout")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--from-step", type=int, default=20)
    parser.add_argument("--to-step", type=int, default=130)
    parser.add_argument("--against", type=Path, default=None, help="another checkout to alternate with")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run (after --)")
    args = parser.parse_args()
    if not args.from_step < args.to_step <= args.steps:
        raise SystemExit("need --from-step < --to-step <= --steps")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    repos = {"this": REPO, **({"against": args.against.resolve()} if args.against else {})}
    runs: dict[str, list[dict]] = {name: [] for name in repos}
    for i in range(args.runs):
        for name, repo in (repos.items() if i % 2 == 0 else reversed(repos.items())):
            run = one_run(repo, args.steps, (args.from_step, args.to_step), args.overrides)
            runs[name].append(run)
            print(f"{name} run {len(runs[name])}: {run['step_s']:.3f} s/step, "
                  + ", ".join(f"{k} {v:.2f}" for k, v in run["cores"].items() if v >= 0.005), flush=True)
    roles = sorted({r for rs in runs.values() for run in rs for r in run["cores"]},
                   key=lambda r: -max(run["cores"].get(r, 0) for rs in runs.values() for run in rs))
    print(f"\ncores per process (mean over runs), steps {args.from_step}-{args.to_step} of {args.steps}")
    print("| process | " + " | ".join(runs) + " |\n|---|" + "---|" * len(runs))
    summary = {}
    for name, rs in runs.items():
        summary[name] = {"step_s": [r["step_s"] for r in rs], "step_s_median": statistics.median(r["step_s"] for r in rs),
                         "cores": {role: statistics.mean(r["cores"].get(role, 0.0) for r in rs) for role in roles}}
    for role in roles:
        if max(s["cores"][role] for s in summary.values()) >= 0.005:
            print(f"| {role} | " + " | ".join(f"{s['cores'][role]:.2f}" for s in summary.values()) + " |")
    print("| all | " + " | ".join(f"{sum(s['cores'].values()):.2f}" for s in summary.values()) + " |")
    print("| s/step | " + " | ".join(" ".join(f"{x:.3f}" for x in s["step_s"]) for s in summary.values()) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(["python", "scripts/bench_cpu_share.py", *sys.argv[1:]]),
              "machine": f"{os.cpu_count()} CPU cores", "started": started,
              "window": [args.from_step, args.to_step], "summary": summary, "runs": runs}
    (args.out / "cpu_share.json").write_text(json.dumps(result, indent=1))
    plot(result, args.out / "cpu_share.png")


if __name__ == "__main__":
    main()
