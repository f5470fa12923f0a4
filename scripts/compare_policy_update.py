"""Convergence of the memory-efficient policy updates against fp32 AdamW, on the default task with grpo-ba.

    python scripts/compare_policy_update.py                        # adamw vs adamw-4bit (3 seeds), + flora, lora, polar, reflora
    python scripts/compare_policy_update.py --seeds 0 --steps 20   # a quick check
    python scripts/compare_policy_update.py ray.torch_threads=1    # any config override, applied to every run
    python scripts/compare_policy_update.py --zo-lrs 3e-4 1e-3     # zeroth-order (optim.name=zo) vs adamw only

Same trainer, reports and run reuse as scripts/reproduce_aggregation.py (its default --out, so the
fp32 AdamW arm *is* that script's grpo-ba runs when both used the same overrides). The parity pair
(adamw, adamw-4bit) runs on --seeds; the other variants on --variant-seeds. Adapters train with
--adapter-lr (adapters usually want a larger step than full fine-tuning; 1e-3 is the common 10x).
Writes OUT/policy_update.md, .json and .png, and prints the 4-bit parity gap.

With --zo-lrs: fp32 AdamW against optim.name=zo at each learning rate (--zo-perturbations K,
--zo-eps ε) on --variant-seeds, at equal samples (same steps) and at equal wall time (trainer
seconds, the sum of each step's time: adamw's accuracy at the last evaluation it reached within
zo's total time); writes OUT/policy_update_zo.md, .json and .png (accuracy against steps and seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reproduce_aggregation import markdown, plot, read_curve, run_one, summarise


def arms(adapter_lr: float) -> dict[str, list[str]]:
    """Arm name -> overrides on grpo-ba. 'grpo-ba' is the fp32 AdamW baseline (run name shared with the
    aggregation reproduction)."""
    adapter = [f"optim.lr={adapter_lr}"]
    return {
        "grpo-ba": [],
        "adamw-4bit": ["optim.name=adamw-4bit"],
        "flora": ["optim.name=flora"],
        "lora": ["lora.kind=lora", *adapter],
        "polar": ["lora.kind=polar", *adapter],
        "reflora": ["lora.kind=reflora", *adapter],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of adamw and adamw-4bit")
    p.add_argument("--variant-seeds", nargs="+", type=int, default=[0], help="seeds of flora and the adapters")
    p.add_argument("--adapter-lr", type=float, default=1e-3, help="learning rate of the LoRA-family arms")
    p.add_argument("--steps", type=int, help="training steps per run (default: the config's train.steps)")
    p.add_argument("--out", default="bench/aggregation", help="folder of run folders and reports")
    p.add_argument("--zo-lrs", nargs="+", type=float, help="compare optim.name=zo at these learning rates with adamw")
    p.add_argument("--zo-perturbations", type=int, default=4, help="zo: optim.zo_perturbations K")
    p.add_argument("--zo-eps", type=float, default=1e-3, help="zo: optim.zo_eps")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = p.parse_args()
    if args.zo_lrs:
        compare_zo(args)
        return

    out = Path(args.out)
    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps else [])
    curves: dict[str, list[list[dict]]] = {}
    for arm, extra in arms(args.adapter_lr).items():
        seeds = args.seeds if arm in ("grpo-ba", "adamw-4bit") else args.variant_seeds
        for seed in seeds:
            run_dir = run_one(out, arm, "grpo-ba", seed, [*extra, *overrides])
            curves.setdefault(arm, []).append(read_curve(run_dir))

    table = summarise(curves, None)
    gap = table["adamw-4bit"]["final"][0] - table["grpo-ba"]["final"][0]
    command = "python scripts/compare_policy_update.py " + " ".join(sys.argv[1:])
    report = (f"`{command.strip()}`\n\n'grpo-ba' is fp32 AdamW; adapters use lr {args.adapter_lr:g}.\n\n"
              + markdown(table, None)
              + f"\nadamw-4bit final minus adamw final: {100 * gap:+.1f} points (target: within 2)\n")
    (out / "policy_update.md").write_text(report)
    (out / "policy_update.json").write_text(json.dumps(
        {"command": command.strip(), "overrides": overrides, "seeds": args.seeds,
         "variant_seeds": args.variant_seeds, "adapter_lr": args.adapter_lr, "adamw_4bit_gap": gap,
         "table": table, "curves": curves}, indent=1))
    plot(curves, out / "policy_update.png", ["step"], "policy update: held-out accuracy, mean ± std over seeds")
    print("\n" + report)
    print(f"wrote {out / 'policy_update'}.md, .json, .png")


def read_timed_curve(run_dir: Path) -> list[dict]:
    """read_curve plus `seconds`: trainer wall time (summed time/step_s) up to each evaluation."""
    elapsed, seconds = 0.0, {0: 0.0}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "time/step_s" in record:
            elapsed += record["time/step_s"]
            seconds[record["step"]] = elapsed
    return [{**e, "seconds": seconds.get(e["step"], elapsed)} for e in read_curve(run_dir)]


def compare_zo(args) -> None:
    """adamw against zo at each --zo-lrs: equal samples and equal wall time."""
    out = Path(args.out)
    overrides = list(args.overrides) + ([f"train.steps={args.steps}"] if args.steps else [])
    zo = ["optim.name=zo", f"optim.zo_perturbations={args.zo_perturbations}", f"optim.zo_eps={args.zo_eps}"]
    arms = {"grpo-ba": [], **{f"zo-lr{lr:g}": [*zo, f"optim.lr={lr}"] for lr in args.zo_lrs}}
    curves: dict[str, list[list[dict]]] = {}
    for arm, extra in arms.items():
        for seed in args.variant_seeds:
            curves.setdefault(arm, []).append(read_timed_curve(run_one(out, arm, "grpo-ba", seed, [*extra, *overrides])))
    table = summarise(curves, None)
    lines = ["| run | seed | final | best | trainer seconds | adamw at equal wall time |", "|---|---|---|---|---|---|"]
    for arm, runs in curves.items():
        for seed, (run, base) in enumerate(zip(runs, curves["grpo-ba"])):
            within = [e for e in base if e["seconds"] <= run[-1]["seconds"]]
            equal_time = f"{within[-1]['accuracy']:.3f} (step {within[-1]['step']})" if arm != "grpo-ba" else "-"
            lines.append(f"| {arm} | {args.variant_seeds[seed]} | {run[-1]['accuracy']:.3f} | "
                         f"{max(e['accuracy'] for e in run):.3f} | {run[-1]['seconds']:.0f} | {equal_time} |")
    command = "python scripts/compare_policy_update.py " + " ".join(sys.argv[1:])
    report = (f"`{command.strip()}`\n\n'grpo-ba' is fp32 AdamW; zo: K = {args.zo_perturbations}, eps = {args.zo_eps:g}, "
              f"learning rates {', '.join(f'{lr:g}' for lr in args.zo_lrs)}.\n\n" + "\n".join(lines) + "\n")
    (out / "policy_update_zo.md").write_text(report)
    (out / "policy_update_zo.json").write_text(json.dumps(
        {"command": command.strip(), "overrides": overrides, "seeds": args.variant_seeds, "zo_lrs": args.zo_lrs,
         "zo_perturbations": args.zo_perturbations, "zo_eps": args.zo_eps, "table": table, "curves": curves}, indent=1))
    plot(curves, out / "policy_update_zo.png", ["step", "seconds"], "zeroth-order vs AdamW: held-out accuracy")
    print("\n" + report)
    print(f"wrote {out / 'policy_update_zo'}.md, .json, .png")


if __name__ == "__main__":
    main()
