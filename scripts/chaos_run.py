"""The default run with faults injected: actors killed at random moments, and one kill -9 of the whole run
mid-way followed by `--resume`; compared with the same run undisturbed.

    python scripts/chaos_run.py                              # 40 steps, 3 actor kills; docs/results/chaos_run.json
    python scripts/chaos_run.py --steps 200 --kills 6        # the full default run
    python scripts/chaos_run.py --steps 6 --out /tmp/chaos   # a quick check (what the test runs)

Each kill is a SIGKILL of one process: a rollout worker, a reward worker or the learner (chosen at
random, at a random moment while steps run), and once, when half the steps are done, of every process
of the run (driver and Ray) at a random moment, checkpoint writes included; the run is then resumed with
`--resume`. Prints a table (faults injected, restarts, steps completed, final accuracy vs the undisturbed
run, metrics equal: yes/no) and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# quantities that depend only on the computation, not on the machine's speed
DETERMINISTIC = ["reward/mean", "learner/pg_loss", "learner/grad_norm", "learner/entropy", "response/length_mean",
                 "eval/accuracy"]
ACTORS = ("ray::RolloutWorker", "ray::RewardWorker", "ray::LearnerWorker")


def processes_with(marker: str) -> dict[int, str]:
    """pid -> command line of every process whose environment holds `marker` (the run and its Ray)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    return found


def steps_done(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    found = 0
    for line in path.read_text().splitlines():
        try:
            found = max(found, json.loads(line)["step"])
        except (ValueError, KeyError):
            pass  # a line being written, or cut by kill -9
    return found


def launch(args, run_name: str, marker: str, resume: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RLFT_CHAOS": marker, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "rlft.train"]
    if resume is not None:
        cmd += ["--resume", str(resume)]
    else:
        cmd += ["--algo", "grpo-ba", *args.overrides, f"train.steps={args.steps}", f"train.output_dir={args.runs}",
                f"train.run_name={run_name}", f"train.save_every={args.save_every}", "train.progress=false",
                f"train.max_restarts={args.kills + 1}"]
    log = open(args.runs / f"{run_name}.log", "a")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def kill_one_actor(marker: str, rng: random.Random) -> str | None:
    """SIGKILL one actor process of the run, picked at random; returns which kind."""
    actors = [(pid, kind) for pid, cmd in processes_with(marker).items() for kind in ACTORS if cmd.startswith(kind)]
    if not actors:
        return None
    pid, kind = rng.choice(actors)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return kind.removeprefix("ray::")


def kill_whole_run(marker: str) -> int:
    """kill -9 of every process of the run at once (the driver and its Ray)."""
    pids = list(processes_with(marker))
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def disturbed_run(args, rng: random.Random) -> dict:
    run_dir = args.runs / "chaos"
    marker = f"chaos-{os.getpid()}-{time.time_ns()}"
    injected: list[dict] = []
    # actor kills at random steps in [1, steps - 1], spread over both halves of the run
    kill_steps = sorted(rng.randint(1, max(1, args.steps - 1)) for _ in range(args.kills))
    whole_run_at = max(1, args.steps // 2)
    proc = launch(args, "chaos", marker)
    resumed, retries = False, 0
    while True:
        done = steps_done(run_dir)
        if kill_steps and done >= kill_steps[0]:
            time.sleep(rng.uniform(0.0, args.jitter_s))  # somewhere inside the next step
            kind = kill_one_actor(marker, rng)
            if kind is not None:
                kill_steps.pop(0)
                injected.append({"fault": f"kill -9 {kind}", "after_step": done})
        if not resumed and done >= whole_run_at:
            time.sleep(rng.uniform(0.0, args.jitter_s))
            at = steps_done(run_dir)
            kill_whole_run(marker)
            proc.wait()
            injected.append({"fault": "kill -9 whole run, then --resume", "after_step": at})
            resumed = True
            marker = f"chaos-{os.getpid()}-{time.time_ns()}"
            proc = launch(args, "chaos", marker, resume=run_dir)
        if proc.poll() is not None:
            if proc.returncode != 0 and startup_failed(args.runs / "chaos.log") and retries < 3:
                retries += 1  # Ray gives its processes 30 s to start: on an overloaded machine, try again
                marker = f"chaos-{os.getpid()}-{time.time_ns()}"
                proc = launch(args, "chaos", marker, resume=run_dir)
                continue
            break
        time.sleep(0.2)
    return {"returncode": proc.returncode, "run_dir": str(run_dir), "injected": injected, "startup_retries": retries}


def startup_failed(log: Path) -> bool:
    """Whether the last attempt logged in `log` stopped because the local Ray did not start in time."""
    tail = log.read_text(errors="replace")[-3000:]
    return "the local Ray did not start" in tail or "timed out during startup" in tail


def records(run_dir: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def compare(clean: Path, chaos: Path) -> dict:
    a, b = records(clean), records(chaos)
    differing = [step for step in a if step in b and any(
        key in a[step] and abs(a[step][key] - b[step].get(key, float("nan"))) > 1e-6 * max(1.0, abs(a[step][key]))
        for key in DETERMINISTIC)]
    return {"steps_in_both": sorted(set(a) & set(b)) == sorted(a), "differing_steps": differing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--kills", type=int, default=3, help="actor processes killed (besides the whole-run kill)")
    parser.add_argument("--save-every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jitter-s", type=float, default=2.0, help="random delay of each kill after its step")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/rlft-chaos"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    parser.add_argument("overrides", nargs="*", help="config key=value for both runs")
    args = parser.parse_args()
    args.runs = args.runs / time.strftime("%Y%m%d-%H%M%S")
    args.runs.mkdir(parents=True)
    rng = random.Random(args.seed)

    started = time.perf_counter()
    clean = launch(args, "clean", f"clean-{os.getpid()}")
    for _ in range(3):  # see startup_failed
        if clean.wait() == 0 or not startup_failed(args.runs / "clean.log"):
            break
        clean = launch(args, "clean", f"clean-{os.getpid()}", resume=args.runs / "clean")
    if clean.returncode != 0:
        print(f"the undisturbed run failed (exit {clean.returncode}); see {args.runs / 'clean.log'}")
        return 1
    chaos = disturbed_run(args, rng)
    clean_summary = json.loads((args.runs / "clean" / "summary.json").read_text())
    summary_path = args.runs / "chaos" / "summary.json"
    chaos_summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    equal = compare(args.runs / "clean", args.runs / "chaos") if chaos_summary else {"differing_steps": ["run failed"]}
    faults = chaos_summary.get("faults", {})
    result = {
        "command": "python scripts/chaos_run.py " + " ".join(sys.argv[1:]),
        "steps": args.steps,
        "faults_injected": chaos["injected"],
        "restarts_seen_after_last_resume": faults,
        "chaos_exit_code": chaos["returncode"],
        "startup_retries": chaos["startup_retries"],
        "steps_completed": chaos_summary.get("steps"),
        "final_accuracy": chaos_summary.get("final_accuracy"),
        "final_accuracy_undisturbed": clean_summary["final_accuracy"],
        "metrics_equal": not equal["differing_steps"],
        "differing_steps": equal["differing_steps"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "runs": str(args.runs),
    }
    print(f"{'fault injected':<40} {'after step':>10}")
    for f in chaos["injected"]:
        print(f"{f['fault']:<40} {f['after_step']:>10}")
    print()
    rows = [
        ("faults injected", len(chaos["injected"])),
        ("worker restarts / timeouts (since resume)", f"{faults.get('worker_restarts', 0)} / {faults.get('worker_timeouts', 0)}"),
        ("learner restarts (since resume)", faults.get("learner_restarts", 0)),
        ("steps completed", f"{result['steps_completed']} of {args.steps}"),
        ("final accuracy (undisturbed)", f"{result['final_accuracy']} ({result['final_accuracy_undisturbed']})"),
        ("metrics equal to the undisturbed run", "yes" if result["metrics_equal"] else f"no: steps {equal['differing_steps']}"),
    ]
    for name, value in rows:
        print(f"{name:<42} {value}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chaos_run.json").write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.out / 'chaos_run.json'}")
    ok = chaos["returncode"] == 0 and result["steps_completed"] == args.steps and result["metrics_equal"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
