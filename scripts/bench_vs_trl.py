"""rlft against TRL's GRPOTrainer, side by side: same model, prompts, group size, response budget, lr and steps.

    python scripts/bench_vs_trl.py                                 # both scales, seeds 0 1 2 (about 40 min on 2 cores)
    python scripts/bench_vs_trl.py --scales default --seeds 0 --steps 20     # a quick look
    python scripts/bench_vs_trl.py --trl-python /path/to/venv-trl/bin/python  # TRL from another venv
    python scripts/bench_vs_trl.py --precision bf16   # both in bf16 mixed precision -> bench_vs_trl_bf16.*

Scales:
- `default`: rlft's embedded default (1.07M-parameter model, 3-digit addition, 32 prompts x 8 samples, 8 new
  tokens, temperature 1, lr 1e-4 constant, no KL, 200 steps), held-out greedy accuracy on the same 500 problems
  every `--eval-every` steps (evaluation time is not counted in either framework's step time).
- `rollout-heavy`: a random ~31M-parameter Qwen2 (hidden 512, 8 layers, the embedded tokenizer), 4 prompts x 4
  samples of up to 256 new tokens (a random model ends a response with probability ~1/128 per token, so lengths
  spread from a few to the cap), reward `digit_share` (share of digits in the response), a few steps. Accuracy is
  meaningless for a random model: reward curves are reported instead.

Each (scale, seed) runs both frameworks back to back in subprocesses, the order alternating by seed, so a shared
machine's load falls on both alike; ratios are taken within a seed. Peak memory is sampled every 0.2 s over the
run's whole process tree (rlft: driver, every Ray actor and Ray's own processes; TRL: its one process).
`--precision bf16` runs both frameworks in bf16 mixed precision (fp32 weights, bf16 matmuls under autocast:
rlft `learner.autocast=bfloat16 rollout.dtype=bfloat16`, TRL `bf16=True`); the default is fp32 for both.

Writes <out>/bench_vs_trl.json, .md and .png (bench_vs_trl_bf16.* for `--precision bf16`) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SCALES = {
    "default": dict(prompts=32, group=8, max_new_tokens=8, lr=1e-4, steps=200, eval_every=10, eval_size=500,
                    reward="exact_answer"),
    # no held-out evaluation (rlft still evaluates at the start and the end: on 8 problems, not 500)
    "rollout-heavy": dict(prompts=4, group=4, max_new_tokens=256, lr=1e-5, steps=3, eval_every=0, eval_size=8,
                          reward="digit_share"),
}


def digit_share(prompt: str, completion: str, **fields) -> float:
    """Share of the response's characters that are digits (a reward a random model can climb)."""
    return sum(ch.isdigit() for ch in completion) / max(1, len(completion))


# --- the random ~31M model of the rollout-heavy scale ---------------------------------------------------------


def build_random_model(folder: Path) -> Path:
    """A seeded random Qwen2 (hidden 512, 8 layers, 8 heads, 4 KV heads) with the embedded tokenizer, saved in HF format."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlft.config import ModelConfig
    from rlft.models.loading import load_tokenizer

    if (folder / "config.json").is_file():
        return folder
    tokenizer = load_tokenizer(ModelConfig())
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=512, intermediate_size=2048, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- memory of a process tree ---------------------------------------------------------------------------------


def _role(proc) -> str:
    """'ray::LearnerWorker', 'raylet', 'python' ...: what a process of the tree is (Ray renames its workers)."""
    try:
        cmd = proc.cmdline()
    except Exception:
        return "?"
    head = cmd[0] if cmd else proc.name()
    if head.startswith("ray::"):
        return head.split(".")[0].split()[0]
    if any("raylet" in c for c in cmd[:2]):
        return "raylet"
    if any("gcs_server" in c for c in cmd[:2]):
        return "gcs_server"
    for key in ("dashboard", "log_monitor", "runtime_env", "monitor.py", "default_worker"):
        if any(key in c for c in cmd):
            return f"ray:{key}"
    return os.path.basename(head)


class TreeMemory:
    """Samples the RSS of a process and all its descendants; keeps each process's peak and the peak of the sum."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.root, self.interval = psutil.Process(pid), interval
        self.peaks: dict[int, tuple[str, int]] = {}
        self.total_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except Exception:
                break
            total = 0
            for p in procs:
                try:
                    rss = p.memory_info().rss
                except Exception:
                    continue
                total += rss
                role, peak = self.peaks.get(p.pid, (None, 0))
                if role is None or not role.startswith("ray::") or role == "ray::IDLE":
                    # a Ray worker takes its actor's name only once it runs the actor: until then it shows as a
                    # default worker, or as the shell that starts it, so look again until it has a final name
                    seen = _role(p)
                    role = seen if seen != "?" or role is None else role
                self.peaks[p.pid] = (role, max(peak, rss))
            self.total_peak = max(self.total_peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        by_role: dict[str, int] = {}
        for role, peak in self.peaks.values():
            by_role[role] = max(by_role.get(role, 0), peak)
        mib = lambda b: round(b / 2**20)  # noqa: E731
        return {"sum_peak_mib": mib(self.total_peak), "processes": len(self.peaks),
                "by_role_mib": {k: mib(v) for k, v in sorted(by_role.items(), key=lambda kv: -kv[1])}}


# --- the two frameworks, each in its own subprocess ------------------------------------------------------------


def rlft_command(scale: str, seed: int, steps: int, out: Path, model: str, extra: list[str]) -> list[str]:
    s = SCALES[scale]
    reward = s["reward"] if s["reward"] == "exact_answer" else f"{Path(__file__).resolve()}:{s['reward']}"
    return [
        sys.executable, "-m", "rlft.train", "--algo", "grpo-ba", "--reward", reward,
        f"model.path={model}", f"rollout.prompts_per_step={s['prompts']}", f"rollout.group_size={s['group']}",
        f"rollout.max_new_tokens={s['max_new_tokens']}", f"optim.lr={s['lr']}", f"train.steps={steps}",
        f"train.seed={seed}", f"train.eval_every={s['eval_every']}", f"data.eval_size={s['eval_size']}",
        "train.save_every=0", "train.progress=false",
        f"train.output_dir={out}", "train.run_name=run", *extra,
    ]


def read_rlft(out: Path) -> dict:
    """Per-step times, rewards and the eval curve of an rlft run folder."""
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "time/step_s" in r]
    evals, clock = [], 0.0
    by_step = {r["step"]: r for r in steps}
    for r in records:
        if "eval/accuracy" in r:
            clock = sum(by_step[s]["time/step_s"] for s in by_step if s <= r["step"])
            evals.append({"step": r["step"], "train_s": clock, "accuracy": r["eval/accuracy"]})
    summary = json.loads((out / "run" / "summary.json").read_text())
    split = {"rollout_s": "time/rollout_s", "learner_s": "time/learner_step_s", "sync_s": "time/sync_s",
             "rollout_wait_s": "time/rollout_wait_s"}
    return {
        "step_s": [r["time/step_s"] for r in steps],
        "split_s": {k: [r.get(v, 0.0) for r in steps] for k, v in split.items()},
        "tokens": summary["tokens_generated"],
        "reward": [r["reward/mean"] for r in steps],
        "evals": evals,
        "own_peak_mib": summary["peak_memory_mb"],
    }


def trl_worker(args) -> None:
    """One TRL GRPOTrainer run (in this process); writes its per-step times, rewards and eval curve to args.json."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlft.data.arithmetic import ArithmeticTask

    s = {**SCALES[args.scale], **({"eval_every": args.eval_every} if args.eval_every is not None else {})}
    if args.trl_threads:
        torch.set_num_threads(args.trl_threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    task = ArithmeticTask(seed=args.seed)
    # the prompts of rlft's steps 1..steps, in order (TRL's shuffling off)
    rows = [row for step in range(1, args.steps + 1) for row in task.train_batch(step, s["prompts"])]
    dataset = Dataset.from_list(rows)

    def exact_answer(prompts, completions, answer, **kw):
        return [float(c.strip() == a.strip()) for c, a in zip(completions, answer)]

    def digits(prompts, completions, **kw):
        return [digit_share(p, c) for p, c in zip(prompts, completions)]

    reward_fn = exact_answer if s["reward"] == "exact_answer" else digits
    config = GRPOConfig(
        output_dir=str(args.out), learning_rate=s["lr"], lr_scheduler_type="constant", warmup_steps=0, beta=0.0,
        num_generations=s["group"], per_device_train_batch_size=s["prompts"] * s["group"],
        max_completion_length=s["max_new_tokens"], temperature=1.0, top_p=1.0, max_steps=args.steps,
        logging_steps=1, save_strategy="no", report_to=[], seed=args.seed, use_cpu=True, shuffle_dataset=False,
        disable_tqdm=True, bf16=args.precision == "bf16",
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward_fn, args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    record = {"step_s": [], "split_s": {"rollout_s": [], "learner_s": []}, "reward": [], "evals": [], "tokens": 0}
    generate = trainer._generate_and_score_completions
    rollout_clock = {"s": 0.0}

    def timed_generate(*a, **kw):  # TRL's rollout and reward phase (generation + reward + advantages)
        start = time.perf_counter()
        out = generate(*a, **kw)
        rollout_clock["s"] += time.perf_counter() - start
        record["tokens"] += int(out["completion_mask"].sum())
        return out

    trainer._generate_and_score_completions = timed_generate
    eval_rows = task.eval_rows

    def evaluate() -> float:
        """Greedy accuracy on the held-out problems, as rlft evaluates (HF generate, left padding)."""
        model.eval()
        tokenizer.padding_side = "left"
        enc = tokenizer([r["prompt"] for r in eval_rows], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=s["max_new_tokens"], do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        model.train()
        return sum(t.strip() == r["answer"] for t, r in zip(texts, eval_rows)) / len(eval_rows)

    class Timing(TrainerCallback):
        def __init__(self):
            self.train_s, self.start = 0.0, 0.0

        def on_train_begin(self, a, state, control, **kw):
            if s["eval_every"]:
                record["evals"].append({"step": 0, "train_s": 0.0, "accuracy": evaluate()})

        def on_step_begin(self, a, state, control, **kw):
            rollout_clock["s"] = 0.0
            self.start = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            took = time.perf_counter() - self.start
            self.train_s += took
            record["step_s"].append(took)
            record["split_s"]["rollout_s"].append(rollout_clock["s"])
            record["split_s"]["learner_s"].append(took - rollout_clock["s"])
            step = state.global_step
            if s["eval_every"] and (step % s["eval_every"] == 0 or step == args.steps):
                record["evals"].append({"step": step, "train_s": self.train_s, "accuracy": evaluate()})

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                record["reward"].append(logs["reward"])

    trainer.add_callback(Timing())
    trainer.train()
    import resource

    record["own_peak_mib"] = {"trainer": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    Path(args.json).write_text(json.dumps(record))


def run_one(framework: str, scale: str, seed: int, steps: int, model: str, rlft_extra: list[str], trl_python: str,
            trl_threads: int, workdir: Path, precision: str = "fp32") -> dict:
    """One run in a subprocess, its process tree's memory sampled; the run's record."""
    out = workdir / f"{framework}-{scale}-{seed}{'' if precision == 'fp32' else '-' + precision}"
    if (out / "record.json").is_file():  # finished in an earlier call with this --workdir
        return json.loads((out / "record.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
    if framework == "rlft":
        bf16 = ["learner.autocast=bfloat16", "rollout.dtype=bfloat16"] if precision == "bf16" else []
        cmd = rlft_command(scale, seed, steps, out, model, rlft_extra + bf16)
    else:
        cmd = [trl_python, str(Path(__file__).resolve()), "--trl-worker", "--scale", scale, "--seed", str(seed),
               "--steps", str(steps), "--model", model, "--out", str(out), "--json", str(out / "trl.json"),
               "--trl-threads", str(trl_threads), "--eval-every", str(SCALES[scale]["eval_every"]),
               "--precision", precision]
    for attempt in range(3):  # a loaded machine can time Ray's start out; that is not the run's failure
        shutil.rmtree(out / "run", ignore_errors=True)
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(out / "stderr.log", "w"))
        memory = TreeMemory(proc.pid)
        rc = proc.wait()
        mem = memory.stop()
        wall = time.perf_counter() - start
        if rc == 0 or "timed out during startup" not in (out / "stderr.log").read_text():
            break
    if rc != 0:
        raise SystemExit(f"{framework} {scale} seed {seed} failed (exit {rc}); see {out / 'stderr.log'}")
    rec = read_rlft(out) if framework == "rlft" else json.loads((out / "trl.json").read_text())
    rec = {**rec, "wall_s": wall, "memory": mem, "command": " ".join(cmd)}
    (out / "record.json").write_text(json.dumps(rec))
    return rec


# --- summary --------------------------------------------------------------------------------------------------


def smoothed(evals: list[dict], window: int = 5) -> list[float]:
    """Trailing mean of the last `window` evals' accuracies (fewer at the start): causal, so a curve is never
    credited with a later eval's accuracy."""
    acc = [e["accuracy"] for e in evals]
    return [sum(acc[max(0, i - window + 1) : i + 1]) / len(acc[max(0, i - window + 1) : i + 1]) for i in range(len(acc))]


def time_to_gain(evals: list[dict], points: float, window: int = 5) -> float | None:
    """Train seconds until a full `window`-eval trailing mean first reaches the initial accuracy (the first eval)
    + `points` (None: never). Full windows only: one lucky early eval cannot count."""
    if not evals:
        return None
    base = evals[0]["accuracy"]
    for i, (e, m) in enumerate(zip(evals, smoothed(evals, window))):
        if i >= window - 1 and m >= base + points / 100:
            return e["train_s"]
    return None


def median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def summarize(run: dict, scale: str) -> dict:
    steps = run["step_s"][1:] or run["step_s"]  # the first step pays for warm-up in both frameworks
    train_s = sum(run["step_s"])
    out = {
        "step_s_median": median(steps),
        "split_s_median": {k: median(v[1:] or v) for k, v in run["split_s"].items() if v},
        "train_s": train_s, "wall_s": run["wall_s"],
        "tokens_per_s": run["tokens"] / train_s,
        "reward_first": run["reward"][0], "reward_last": run["reward"][-1],
        "memory": run["memory"], "own_peak_mib": run["own_peak_mib"],
    }
    if scale == "default":
        ev = run["evals"]
        out.update({"acc_initial": ev[0]["accuracy"], "acc_final": ev[-1]["accuracy"],
                    "acc_final_5mean": smoothed(ev)[-1],
                    "time_to_+10_s": time_to_gain(ev, 10), "time_to_+20_s": time_to_gain(ev, 20)})
    return out


def table(results: dict) -> str:
    lines = []
    for scale, seeds in results["runs"].items():
        lines.append(f"\n### {scale}\n")
        lines.append("| seed | framework | step s (median) | rollout s | learner s | sync s | tokens/s | "
                     + ("acc 0 -> final (5-mean) | to +10 s | to +20 s | " if scale == "default" else "reward first -> last | ")
                     + "peak MiB: learner or trainer / sum of tree |")
        lines.append("|---" * (10 if scale == "default" else 8) + "|")
        for seed, pair in seeds.items():
            for fw in ("rlft", "trl"):
                s = pair[fw]["summary"]
                sp = s["split_s_median"]
                fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
                own = s["own_peak_mib"].get("learner", s["own_peak_mib"].get("trainer"))
                row = (f"| {seed} | {fw} | {s['step_s_median']:.3f} | {sp.get('rollout_s', 0):.3f} | "
                       f"{sp.get('learner_s', 0):.3f} | {sp.get('sync_s', 0):.3f} | {s['tokens_per_s']:.0f} | ")
                if scale == "default":
                    row += (f"{s['acc_initial']:.3f} -> {s['acc_final']:.3f} ({s['acc_final_5mean']:.3f}) | "
                            f"{fmt(s['time_to_+10_s'])} | {fmt(s['time_to_+20_s'])} | ")
                else:
                    row += f"{s['reward_first']:.3f} -> {s['reward_last']:.3f} | "
                lines.append(row + f"{own} / {s['memory']['sum_peak_mib']} |")
        r = results["ratios"][scale]
        lines.append("\nrlft / TRL, per seed: " + "; ".join(f"{k} {v}" for k, v in r.items()))
    return "\n".join(lines)


def ratios(seeds: dict, scale: str) -> dict:
    out: dict[str, list] = {"step_time": []}
    if scale == "default":
        out.update({"time_to_+10": [], "time_to_+20": [], "final_acc_5mean_diff": []})
    for pair in seeds.values():
        a, b = pair["rlft"]["summary"], pair["trl"]["summary"]
        out["step_time"].append(round(a["step_s_median"] / b["step_s_median"], 3))
        if scale == "default":
            for k in ("+10", "+20"):
                x, y = a[f"time_to_{k}_s"], b[f"time_to_{k}_s"]
                out[f"time_to_{k}"].append(round(x / y, 3) if x is not None and y else None)
            out["final_acc_5mean_diff"].append(round(a["acc_final_5mean"] - b["acc_final_5mean"], 3))
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = list(results["runs"])
    fig, axes = plt.subplots(1, 2 * len(scales), figsize=(6 * 2 * len(scales), 4))
    axes = list(axes) if len(scales) > 0 else [axes]
    colors = {"rlft": "tab:blue", "trl": "tab:orange"}
    for i, scale in enumerate(scales):
        ax_curve, ax_step = axes[2 * i], axes[2 * i + 1]
        for seed, pair in results["runs"][scale].items():
            for fw, run in pair.items():
                label = fw if seed == next(iter(results["runs"][scale])) else None
                if scale == "default":
                    ev = run["evals"]
                    ax_curve.plot([e["train_s"] for e in ev], smoothed(ev), color=colors[fw], label=label, alpha=0.8)
                else:
                    ax_curve.plot(range(1, len(run["reward"]) + 1), run["reward"], color=colors[fw], label=label,
                                  marker="o", alpha=0.8)
                ax_step.plot(range(1, len(run["step_s"]) + 1), run["step_s"], color=colors[fw], label=label, alpha=0.6)
        if scale == "default":
            ax_curve.set(xlabel="train seconds (evaluation excluded)", ylabel="held-out accuracy (5-eval mean)",
                         title=f"{scale}: accuracy over time")
        else:
            ax_curve.set(xlabel="step", ylabel="mean reward (digit share)", title=f"{scale}: reward per step")
        ax_step.set(xlabel="step", ylabel="seconds", title=f"{scale}: step time", yscale="log")
        ax_curve.legend()
        ax_step.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scales", nargs="+", default=list(SCALES), choices=list(SCALES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--heavy-seeds", nargs="+", type=int, default=None, help="seeds of rollout-heavy (default: --seeds)")
    parser.add_argument("--eval-every", type=int, default=None, help="default scale: evaluate every N steps")
    parser.add_argument("--steps", type=int, default=None, help="steps of the default scale (default: 200)")
    parser.add_argument("--heavy-steps", type=int, default=None, help="steps of the rollout-heavy scale (default: 3)")
    parser.add_argument("--rlft", nargs="*", default=["train.mode=async", "algo.tis_cap=2.0"],
                        help="extra rlft key=value settings (default: asynchronous, one-step off-policy)")
    parser.add_argument("--trl-python", default=sys.executable, help="python of an environment that has trl")
    parser.add_argument("--trl-threads", type=int, default=0,
                        help="torch threads of the TRL process (0: torch's default, every core)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="both frameworks' precision: fp32, or bf16 mixed precision (autocast over fp32 weights)")
    parser.add_argument("--out", default=str(REPO / "docs" / "results"))
    parser.add_argument("--workdir", default=None,
                        help="where runs are written (default: a temporary folder); runs finished there are reused")
    # internal: one TRL run
    parser.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scale", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.trl_worker:
        trl_worker(args)
        return
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_vs_trl-"))
    results = {"settings": {k: SCALES[k] for k in args.scales}, "rlft_extra": args.rlft, "precision": args.precision,
               "runs": {}, "ratios": {},
               "machine": f"{os.cpu_count()} CPU cores", "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    from rlft.models.loading import resolve_model_path

    for scale in args.scales:
        steps = (args.heavy_steps if scale == "rollout-heavy" else args.steps) or SCALES[scale]["steps"]
        if scale == "default" and args.eval_every:
            SCALES[scale]["eval_every"] = args.eval_every  # read again by the TRL worker: passed on below
        results["settings"][scale] = {**SCALES[scale], "steps": steps}
        seeds = args.heavy_seeds if scale == "rollout-heavy" and args.heavy_seeds else args.seeds
        model = (str(resolve_model_path("embedded")) if scale == "default"
                 else str(build_random_model(workdir / "random-31m")))
        results["runs"][scale] = {}
        for i, seed in enumerate(seeds):
            order = ("rlft", "trl") if i % 2 == 0 else ("trl", "rlft")  # alternated: load drifts hit both alike
            pair = {}
            for fw in order:
                run = run_one(fw, scale, seed, steps, model, args.rlft, args.trl_python, args.trl_threads, workdir,
                              args.precision)
                run["summary"] = summarize(run, scale)
                pair[fw] = run
                print(f"{scale} seed {seed} {fw}: step {run['summary']['step_s_median']:.3f} s, "
                      f"wall {run['wall_s']:.0f} s", flush=True)
            results["runs"][scale][str(seed)] = {"rlft": pair["rlft"], "trl": pair["trl"]}
        results["ratios"][scale] = ratios(results["runs"][scale], scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = table(results)
    print(text)
    stem = "bench_vs_trl" + ("" if args.precision == "fp32" else "_" + args.precision)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    (out / f"{stem}.md").write_text(text + "\n")
    plot(results, out / f"{stem}.png")


if __name__ == "__main__":
    main()
