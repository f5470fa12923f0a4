"""Reproduce the aggregation comparisons (grpo, grpo-token, grpo-ba; dr-grpo on the scratchpad task) and TPO.

    python scripts/reproduce_aggregation.py                       # 3 presets x 3 seeds, default task and config
    python scripts/reproduce_aggregation.py --seeds 0 --steps 20  # a quick check
    python scripts/reproduce_aggregation.py --transfer            # TPO: helpful source, useless source, none
    python scripts/reproduce_aggregation.py ray.torch_threads=1   # any config override, applied to every run
    python scripts/reproduce_aggregation.py --task scratchpad     # 4 presets on the varying-length task

Every run goes through the real trainer (`rlft.pipeline.driver.train`) and keeps its run folder under
OUT/runs/; a run whose folder already holds summary.json is read back, not trained again, so an
interrupted reproduction continues where it stopped. Held-out accuracy (greedy, `data.eval_size`
problems) is reported as mean +- std over seeds: final, best, and the drop from best to final, in
OUT/<experiment>.md, .json and .png (the curves).

With `--task scratchpad` (multi-step addition written out, `data.source=scratchpad`) the arms are
grpo, grpo-token, dr-grpo and grpo-ba at equal samples: grpo-token is token-mean aggregation alone
(the DAPO preset's group filtering, clip-higher and overlong penalty off), so it differs from grpo
only in how tokens are weighed. The report adds, from every training step's metrics: response
length of right and wrong answers, the correlation of length with the advantage sign, and the
gradient weight each scheme puts on long wrong answers (`rlft.algorithms.weight_stats`); and
whether each arm's difference from grpo is larger than the seed noise.

The transfer experiment compares, on one preset: TPO with a helpful source (`digit_credit`, digit-wise
partial credit), with a useless one (`random_score`), and plain sampling. Its x-axes are samples
scored by the target reward (what TPO saves) and samples generated (what it spends: G - r + N per
prompt of a source arm instead of G).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rlft.config import resolve_config  # noqa: E402
from rlft.pipeline.driver import ray_session, train  # noqa: E402

AGGREGATION_ARMS = {"grpo": [], "grpo-token": [], "grpo-ba": []}
TOKEN_MEAN_ONLY = ["algo.filter_groups=false", "algo.clip_eps_high=0.2", "algo.overlong=none"]
SCRATCHPAD_ARMS = {"grpo": [], "grpo-token": TOKEN_MEAN_ONLY, "dr-grpo": [], "grpo-ba": []}
STEP_KEYS = ["response/length_right", "response/length_wrong", "weights/length_sign_corr",
             "weights/negative_share", "weights/long_wrong_share", "weights/long_wrong_token_weight",
             "train/accuracy"]
TRANSFER_ARMS = {
    "tpo-helpful": ["transfer.sources=[digit_credit]"],
    "tpo-useless": ["transfer.sources=[random_score]"],
    "no-transfer": [],
}


def run_one(out: Path, arm: str, algo: str, seed: int, overrides: list[str]) -> Path:
    """Train one (arm, seed) unless its run folder already has a summary; returns the run folder."""
    run_dir = out / "runs" / f"{arm}-s{seed}"
    if (run_dir / "summary.json").is_file():
        print(f"[reuse] {run_dir}", flush=True)
        return run_dir
    if run_dir.exists():  # an interrupted run: start it again from scratch
        import shutil

        shutil.rmtree(run_dir)
    cfg = resolve_config(algo, None, [
        f"train.seed={seed}", f"train.output_dir={out / 'runs'}", f"train.run_name={arm}-s{seed}",
        "train.progress=false", *overrides,
    ])
    ray_session(cfg)  # one Ray instance for every run of the script
    print(f"[train] {arm} seed {seed}: {cfg.train.steps} steps", flush=True)
    summary = train(cfg)
    print(f"[done]  {arm} seed {seed}: final {summary['final_accuracy']:.3f} best {summary['best_accuracy']:.3f} "
          f"({summary['train_seconds']:.0f} s)", flush=True)
    return run_dir


def read_curve(run_dir: Path) -> list[dict]:
    """Held-out evaluations of a run: step, accuracy, and the samples generated / target-scored so far."""
    samples = {0: (0, 0)}
    curve = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "samples" in record:
            samples[record["step"]] = (record["samples"], record.get("samples_scored", record["samples"]))
        if "eval/accuracy" in record:
            generated, scored = samples.get(record["step"], samples[max(samples)])
            curve.append({"step": record["step"], "accuracy": record["eval/accuracy"],
                          "samples": generated, "samples_scored": scored})
    return curve


def read_steps(run_dir: Path) -> list[dict]:
    """Per training step: the length and aggregation-weight statistics (STEP_KEYS) the trainer logged."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "time/step_s" in record:
            rows.append({"step": record["step"], **{k: record[k] for k in STEP_KEYS if k in record}})
    return rows


def step_means(runs: list[list[dict]], key: str, first: int | None = None, last: int | None = None) -> tuple:
    """Mean over seeds (and std) of each run's mean of `key` over its first / last steps (or all)."""
    per_run = []
    for run in runs:
        rows = run[:first] if first else run[-last:] if last else run
        values = [r[key] for r in rows if key in r]
        if values:
            per_run.append(statistics.fmean(values))
    return mean_std(per_run) if per_run else None


def beyond_noise(a: list[float], b: list[float]) -> tuple[float, bool]:
    """Difference of means b - a and whether it exceeds twice its standard error (Welch)."""
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5 if min(len(a), len(b)) > 1 else 0.0
    diff = statistics.fmean(b) - statistics.fmean(a)
    return diff, se > 0 and abs(diff) > 2 * se


def length_report(curves: dict, steps: dict, window: int) -> str:
    """Markdown: per arm, lengths of right/wrong answers early and late, the length-sign correlation, the
    weight on long wrong answers; then each arm's final/best accuracy against grpo's and the seed noise."""
    head = ("| run | length right (first / last {w} steps) | length wrong (first / last {w}) | corr(length, sign A) "
            "| weight share on A<0 | weight share on long wrong | per-token weight of long wrong |").format(w=window)
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arm, runs in steps.items():
        cells = []
        for key in ("response/length_right", "response/length_wrong"):
            early, late = step_means(runs, key, first=window), step_means(runs, key, last=window)
            cells.append(f"{fmt(early, 1) if early else '-'} / {fmt(late, 1) if late else '-'}")
        for key in ("weights/length_sign_corr", "weights/negative_share", "weights/long_wrong_share",
                    "weights/long_wrong_token_weight"):
            pair = step_means(runs, key)
            cells.append(fmt(pair) if pair else "-")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    base = curves.get("grpo")
    if base:
        lines += ["", "Difference from grpo (mean over seeds; 'yes' when larger than twice its standard error):", "",
                  "| run | final: difference | beyond noise | best: difference | beyond noise |", "|---|---|---|---|---|"]
        for arm, runs in curves.items():
            if arm == "grpo":
                continue
            cells = []
            for pick in (lambda run: run[-1]["accuracy"], lambda run: max(e["accuracy"] for e in run)):
                diff, real = beyond_noise([pick(r) for r in base], [pick(r) for r in runs])
                cells += [f"{diff:+.3f}", "yes" if real else "no"]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(curves: dict[str, list[list[dict]]], target: float | None) -> dict:
    """Per arm: final, best and drop (mean, std over seeds); with `target`, the samples to first reach it."""
    table = {}
    for arm, runs in curves.items():
        finals = [run[-1]["accuracy"] for run in runs]
        bests = [max(e["accuracy"] for e in run) for run in runs]
        row = {
            "seeds": len(runs),
            "initial": mean_std([run[0]["accuracy"] for run in runs]),
            "final": mean_std(finals),
            "best": mean_std(bests),
            "drop": mean_std([b - f for b, f in zip(bests, finals)]),
            "samples": mean_std([run[-1]["samples"] for run in runs]),
            "samples_scored": mean_std([run[-1]["samples_scored"] for run in runs]),
        }
        if target is not None:
            reached = [next((e for e in run if e["accuracy"] >= target), None) for run in runs]
            hits = [e for e in reached if e is not None]
            row["reached"] = len(hits)
            row["scored_to_target"] = mean_std([e["samples_scored"] for e in hits]) if hits else None
            row["generated_to_target"] = mean_std([e["samples"] for e in hits]) if hits else None
        table[arm] = row
    return table


def fmt(pair, digits: int = 3) -> str:
    if pair is None:
        return "not reached"
    mean, std = pair
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if digits else f"{mean:,.0f} ± {std:,.0f}"


def markdown(table: dict, target: float | None) -> str:
    head = "| run | seeds | initial | final | best | drop from best | samples generated | samples scored |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for arm, row in table.items():
        lines.append(
            f"| {arm} | {row['seeds']} | {fmt(row['initial'])} | {fmt(row['final'])} | {fmt(row['best'])} | "
            f"{fmt(row['drop'])} | {fmt(row['samples'], 0)} | {fmt(row['samples_scored'], 0)} |"
        )
    if target is not None:
        lines += ["", f"Samples until held-out accuracy first reaches {target:.3f} (seeds that reached it):", "",
                  "| run | reached | samples scored | samples generated |", "|---|---|---|---|"]
        for arm, row in table.items():
            lines.append(f"| {arm} | {row['reached']}/{row['seeds']} | {fmt(row['scored_to_target'], 0)} | "
                         f"{fmt(row['generated_to_target'], 0)} |")
    return "\n".join(lines) + "\n"


def plot(curves: dict[str, list[list[dict]]], path: Path, x_keys: list[str], title: str, steps: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = {"step": "training step", "samples": "samples generated", "samples_scored": "samples scored by the target",
              "seconds": "trainer wall seconds (summed step times)"}
    panels = len(x_keys) + (steps is not None)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4), squeeze=False)
    for ax, key in zip(axes[0], x_keys):
        for arm, runs in curves.items():
            n = min(len(run) for run in runs)  # runs of one arm evaluate at the same steps
            x = np.mean([[e[key] for e in run[:n]] for run in runs], axis=0)
            y = np.array([[e["accuracy"] for e in run[:n]] for run in runs])
            std = y.std(0, ddof=1) if len(runs) > 1 else np.zeros(n)  # the table's sample std
            ax.plot(x, y.mean(0), label=f"{arm} (n={len(runs)})")
            ax.fill_between(x, y.mean(0) - std, y.mean(0) + std, alpha=0.2)
        ax.set_xlabel(labels[key])
        ax.set_ylabel("held-out accuracy (greedy)")
        ax.grid(alpha=0.3)
        ax.legend()
    if steps is not None:
        plot_lengths(steps, axes[0][-1])
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_lengths(steps: dict[str, list[list[dict]]], ax, smooth: int = 5) -> None:
    """Response length of right (solid) and wrong (dashed) answers per step: mean and std over seeds."""
    import numpy as np

    for k, (arm, runs) in enumerate(steps.items()):
        color = f"C{k}"
        for key, style in (("response/length_right", "-"), ("response/length_wrong", "--")):
            n = min(len(run) for run in runs)
            y = np.array([[r.get(key, np.nan) for r in run[:n]] for run in runs], dtype=float)
            kernel = np.ones(smooth) / smooth  # a moving average: one step's batch is 64-256 samples
            y = np.array([np.convolve(np.nan_to_num(row, nan=np.nanmean(row)), kernel, mode="valid") for row in y])
            x = np.arange(1, n + 1)[smooth - 1:]
            mean, std = y.mean(0), (y.std(0, ddof=1) if len(runs) > 1 else np.zeros(y.shape[1]))
            label = f"{arm} {'right' if style == '-' else 'wrong'}"
            ax.plot(x, mean, style, color=color, label=label)
            ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.12)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"response length, tokens ({smooth}-step moving average)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transfer", action="store_true", help="run the TPO experiment instead of the aggregation one")
    p.add_argument("--task", choices=["arithmetic", "scratchpad"], default="arithmetic",
                   help="aggregation: the embedded task (scratchpad: 4 arms and the length/weight report)")
    p.add_argument("--algos", nargs="+", help="arms compared (aggregation; default: the task's arms)")
    p.add_argument("--transfer-algo", default="grpo-ba", help="preset under the three transfer arms")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="training steps per run (default: the config's train.steps)")
    p.add_argument("--target-accuracy", type=float,
                   help="transfer: accuracy whose samples-to-reach is reported (default: no-transfer's mean final)")
    p.add_argument("--no-train", action="store_true",
                   help="report the finished runs only (a reproduction cut short); the others are listed as missing")
    p.add_argument("--window", type=int, default=10, help="scratchpad: steps averaged for early / late lengths")
    p.add_argument("--out", help="folder of run folders and reports (default: bench/<experiment>)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args()

    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps else [])
    scratch = not args.transfer and args.task == "scratchpad"
    if args.transfer:
        experiment, arms = "transfer", {arm: (args.transfer_algo, extra) for arm, extra in TRANSFER_ARMS.items()}
    elif scratch:
        experiment = "aggregation_scratchpad"
        overrides = ["data.source=scratchpad", *overrides]
        arms = {arm: (arm, SCRATCHPAD_ARMS.get(arm, [])) for arm in args.algos or SCRATCHPAD_ARMS}
    else:
        experiment, arms = "aggregation", {algo: (algo, []) for algo in args.algos or AGGREGATION_ARMS}
    out = Path(args.out or f"bench/{experiment}")
    curves: dict[str, list[list[dict]]] = {}
    steps: dict[str, list[list[dict]]] = {}
    missing = []
    for seed in args.seeds:  # seeds outermost: a reproduction cut short has every arm on the same seeds
        for arm, (algo, extra) in arms.items():
            if args.no_train and not (out / "runs" / f"{arm}-s{seed}" / "summary.json").is_file():
                missing.append(f"{arm}-s{seed}")
                continue
            run_dir = run_one(out, arm, algo, seed, [*extra, *overrides])
            curves.setdefault(arm, []).append(read_curve(run_dir))
            steps.setdefault(arm, []).append(read_steps(run_dir))

    target = None
    if args.transfer:
        target = args.target_accuracy or statistics.fmean(run[-1]["accuracy"] for run in curves["no-transfer"])
    table = summarise(curves, target)
    command = "python scripts/reproduce_aggregation.py " + " ".join(sys.argv[1:])
    report = f"`{command.strip()}`\n\n" + markdown(table, target)
    if missing:
        report += f"\nNot finished, left out: {', '.join(missing)}.\n"
    if scratch:
        report += "\n" + length_report(curves, steps, args.window)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{experiment}.md").write_text(report)
    (out / f"{experiment}.json").write_text(json.dumps(
        {"command": command.strip(), "overrides": overrides, "seeds": args.seeds, "missing": missing, "target_accuracy": target,
         "table": table, "curves": curves, **({"steps": steps} if scratch else {})}, indent=1))
    x_keys = ["samples_scored", "samples", "step"] if args.transfer else ["step"]
    title = f"{experiment}: held-out accuracy" + (" and response length" if scratch else "") + ", mean ± std over seeds"
    plot(curves, out / f"{experiment}.png", x_keys, title, steps if scratch else None)
    print("\n" + report)
    print(f"wrote {out / experiment}.md, .json, .png")


if __name__ == "__main__":
    main()
