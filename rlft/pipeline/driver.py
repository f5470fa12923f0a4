"""The single controller: rollout -> reward -> learner -> weight sync, one step at a time (on-policy), or
with the next steps' rollouts drawn while the learner trains (`train.mode=async`, see async_rollout.py).

Reads top to bottom: `train()` sets up the run folder and Ray, `Trainer.run()` is the loop.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from rlft.algorithms.weight_stats import weight_statistics
from rlft.config import RLConfig, config_to_yaml
from rlft.data import build_task
from rlft.errors import UserError
from rlft.models.loading import context_length, load_tokenizer
from rlft.pipeline import checkpoint as ckpt
from rlft.pipeline.actors import start_actors
from rlft.pipeline.async_rollout import Draw, RolloutQueue
from rlft.pipeline.batch import assign_advantages, build_train_batch
from rlft.pipeline.learner_group import LearnerGroup
from rlft.pipeline.ray_session import close_ray, ray_session
from rlft.pipeline.report import plot_curves
from rlft.pipeline.shaping import GroupSampler, kl_reward_penalty
from rlft.reward import RewardFailureError, check_failure_rate
from rlft.rollout.streaming import GroupStream, score_groups
from rlft.rollout.types import SamplingParams, merge_engine_stats

log = logging.getLogger("rlft")
IN_FLIGHT = "in_flight.pt"  # async mode: the draws a checkpoint held in flight


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` cut into `parts` contiguous slices whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


class Trainer:
    """Owns the actors and the run folder for one run."""

    def __init__(self, cfg: RLConfig, run_dir: Path, started: float | None = None):
        self.started = started if started is not None else time.perf_counter()
        self.cfg = cfg
        self.run_dir = run_dir
        self.tokenizer = load_tokenizer(cfg.model)
        context = context_length(cfg.model)  # a prompt must leave room for the response in it
        self.task = build_task(cfg.data, self.tokenizer, cfg.train.seed,
                               None if context is None else context - cfg.rollout.max_new_tokens)
        self.rollout, self.rewarders, self.learner = start_actors(cfg)
        self.eval_prompt_ids = [self._tokenize(r["prompt"]) for r in self.task.eval_rows]
        self.state = {"step": 0, "evals": [], "samples": 0, "tokens": 0, "train_seconds": 0.0}
        self.sampler = GroupSampler(cfg, self.task, self._tokenize, self.generate, self.score)
        self.engine_stats: list[dict[str, float]] = []  # per worker and generate call, since the draw began
        self.rollouts = None  # async mode: the queue of batches drawn ahead (made when the loop starts)
        self._in_flight: list[Draw] = []  # async mode: draws a restored checkpoint held in flight

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    # --- the phases of a step -----------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, stream: bool = False):
        """Groups for `prompt_ids` in prompt order, the prompts dealt evenly to the rollout workers; with
        `stream`, a GroupStream that yields each group the moment it completes (hand it to `score`)."""
        groups = GroupStream(self.rollout, split_evenly(prompt_ids, len(self.rollout)), params, self.engine_stats)
        return groups if stream else groups.collect()

    def score(self, rows: list[dict], groups: list[list[dict]] | GroupStream) -> tuple[torch.Tensor, dict]:
        """Rewards [prompts, G] in prompt order and the reward metrics. A GroupStream is scored while it
        decodes: each chunk of consecutive prompts goes to a reward worker once its groups are in."""
        if isinstance(groups, GroupStream):
            return score_groups(self.rewarders, rows, groups.groups, (index for index, _ in groups))
        return score_groups(self.rewarders, rows, groups, range(len(groups)))

    def sync_weights(self) -> None:
        """Learner -> object store -> every rollout worker (one put, many gets)."""
        weights = self.learner.state_dict.remote()
        ray.get([w.load_weights.remote(weights) for w in self.rollout])

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy of the current policy (greedy unless rollout.eval_temperature > 0)."""
        r = self.cfg.rollout
        params = SamplingParams(
            n=1, temperature=r.eval_temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens, stop=r.stop,
            seed=self.cfg.train.seed,
        )
        rewards, _ = self.score(self.task.eval_rows, self.generate(self.eval_prompt_ids, params, stream=True))
        threshold = self.cfg.train.eval_accuracy_threshold
        return {"eval/accuracy": float((rewards >= threshold).float().mean()), "eval/reward": float(rewards.mean())}

    def draw(self, step: int, version: int) -> Draw:
        """Step `step`'s rollout and reward (TPO, overlong, group filtering) with the policy after `version` steps."""
        self.engine_stats.clear()  # the evaluation's generate calls are not this draw's
        groups, metrics = self.sampler.draw(step)
        for group in groups.completions:
            for c in group:
                c["policy_version"] = version
        engine: dict[str, float] = {}
        for stats in self.engine_stats:
            engine = merge_engine_stats(engine, stats)
        metrics.update({f"rollout/{k}": v for k, v in engine.items()})
        return Draw(step, version, groups, metrics, dict(self.sampler.timings), dict(self.sampler.generated), engine)

    def train_step(self, step: int) -> dict[str, float]:
        cfg, r = self.cfg, self.cfg.rollout
        t0 = time.perf_counter()
        if self.rollouts is None:
            drawn = self.draw(step, step - 1)
        else:  # async: submit the draws up to step + max_staleness, then take this step's (drawn earlier)
            self.rollouts.fill(step, self.learner.state_dict.remote, step - 1)
            drawn = self.rollouts.take(step)
        groups, metrics = drawn.groups, drawn.metrics
        t2 = time.perf_counter()
        self.state["rollout"] = merge_engine_stats(self.state.get("rollout", {}), drawn.engine)
        if len(groups):
            batch = build_train_batch(
                groups.prompt_ids,
                [[c["token_ids"] for c in g] for g in groups.completions],
                [[c["logprobs"] for c in g] for g in groups.completions],
                groups.rewards, cfg.algo, r.max_new_tokens, self.tokenizer.pad_token_id, keep=groups.keep,
            )
            if cfg.algo.kl_coef > 0 and cfg.algo.kl_mode == "reward":  # the penalty enters before the advantages
                ref = ray.get(self.learner.reference_logprobs.remote(batch))
                penalty = kl_reward_penalty(batch, ref, cfg.algo, tuple(groups.rewards.shape))
                assign_advantages(batch, groups.rewards - penalty, cfg.algo, r.max_new_tokens, groups.keep)
                metrics["reward/kl_penalty"] = float(penalty.mean())
            correct = groups.rewards >= cfg.train.eval_accuracy_threshold  # lengths and weights of right/wrong
            lengths = batch.response_mask.sum(dim=1).view_as(correct)
            metrics.update(weight_statistics(batch.weights, batch.advantages, lengths, correct))
            metrics.update(ray.get(self.learner.train_step.remote(batch)))
            t3 = time.perf_counter()
            if self.rollouts is None:  # async: the next draw loads the weights itself
                self.sync_weights()
        else:  # group filtering found no group with unequal rewards: nothing to learn from this step
            metrics["shaping/skipped_step"] = 1.0
            t3 = time.perf_counter()
        t4 = time.perf_counter()

        self.state["samples"] += drawn.generated["samples"]
        self.state["tokens"] += drawn.generated["tokens"]
        self.state["samples_scored"] = self.state.get("samples_scored", 0) + drawn.generated["scored"]
        if self.rollouts is None:  # async: saved with the draws in flight (see save)
            self.state["sampler"] = self.sampler.state_dict()
        else:
            metrics.update(drawn.staleness(step - 1))
            metrics["time/rollout_wait_s"] = t2 - t0  # what the overlap did not hide
        rollout_s = drawn.timings["rollout"]
        metrics.update({
            "step": step,
            "samples": self.state["samples"],  # generated so far, TPO's extra and group filtering's refills included
            "samples_scored": self.state["samples_scored"],  # of which scored by the target reward
            # rollout_s includes the target reward streamed during decoding; reward_s is reward time outside it
            "time/rollout_s": rollout_s, "time/reward_s": drawn.timings["reward"],
            "time/learner_step_s": t3 - t2, "time/sync_s": t4 - t3, "time/step_s": t4 - t0,
            "throughput/rollout_tokens_per_s": drawn.generated["tokens"] / max(rollout_s, 1e-9),
        })
        return metrics

    # --- checkpoints --------------------------------------------------------------------------

    def save(self, step: int) -> Path:
        tmp = ckpt.staging_dir(self.run_dir, step)
        ray.get(self.learner.save.remote(str(tmp)))
        self.tokenizer.save_pretrained(tmp)
        if self.rollouts is not None:  # async: the draws in flight were made by older weights; keep them
            torch.save(self.rollouts.wait(), tmp / IN_FLIGHT)
            self.state["sampler"] = self.sampler.state_dict()
        return ckpt.commit_checkpoint(self.run_dir, step, tmp, self.state, self.cfg.train.keep_checkpoints)

    def restore(self, path: Path) -> None:
        ray.get(self.learner.load.remote(str(path)))
        self.state = json.loads((path / "trainer_state.json").read_text())
        self.sampler.load_state_dict(self.state.get("sampler", {}))  # TPO arm statistics survive a resume
        if (path / IN_FLIGHT).is_file():
            self._in_flight = torch.load(path / IN_FLIGHT, weights_only=False)
        self.sync_weights()

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        metrics_path = self.run_dir / "metrics.jsonl"
        start = self.state["step"]
        _truncate_metrics(metrics_path, start)
        if cfg.train.mode == "async":
            self.rollouts = RolloutQueue(self.draw, self.rollout, cfg.train.max_staleness, cfg.train.steps)
            self.rollouts.restore(self._in_flight)
        if not self.state["evals"]:
            self._record_eval(0, metrics_path)
        bar = tqdm(total=cfg.train.steps, initial=start, desc="rlft", unit="step", disable=not cfg.train.progress,
                   dynamic_ncols=True)
        try:
            for step in range(start + 1, cfg.train.steps + 1):
                t0 = time.perf_counter()
                metrics = self.train_step(step)
                self.state["step"] = step
                self.state["train_seconds"] += time.perf_counter() - t0
                self._check_reward_failures(step, metrics)
                last = step == cfg.train.steps
                if (cfg.train.eval_every and step % cfg.train.eval_every == 0) or last:
                    metrics.update(self._eval_now(step))
                _append_jsonl(metrics_path, metrics)
                self._check_nonfinite(step, metrics)
                if (cfg.train.save_every and step % cfg.train.save_every == 0) or last:
                    self.save(step)
                bar.update(1)
                bar.set_postfix(
                    reward=f"{metrics['reward/mean']:.3f}", acc=f"{self.state['evals'][-1]['eval/accuracy']:.3f}",
                    tok_s=f"{metrics['throughput/rollout_tokens_per_s']:.0f}", refresh=False,
                )
        finally:
            bar.close()
            if self.rollouts is not None:
                self.rollouts.close()
        return self.summary()

    def _eval_now(self, step: int) -> dict:
        if self.rollouts is not None:  # async: let the draws in flight finish, then evaluate this step's weights
            self.rollouts.wait()
            self.sync_weights()
        result = self.evaluate()
        self.state["evals"].append({"step": step, **result})
        return result

    def _record_eval(self, step: int, metrics_path: Path) -> None:
        result = self._eval_now(step)
        _append_jsonl(metrics_path, {"step": step, **result})

    def _check_reward_failures(self, step: int, metrics: dict) -> None:
        """Past reward.max_failure_rate: save what was learned, then stop with the reward's error."""
        try:
            check_failure_rate(metrics, self.cfg.reward)
        except RewardFailureError as e:
            path = self.save(step)
            raise RewardFailureError(f"step {step}: {e}. Checkpoint saved at {path}; resume with --resume {self.run_dir}") from None

    def _check_nonfinite(self, step: int, metrics: dict) -> None:
        """Past train.max_nonfinite_steps skipped NaN/inf steps in a row: save, then stop with a message."""
        skipped = metrics.get("learner/nonfinite_steps", 0.0)
        self.state["nonfinite_steps"] = self.state.get("nonfinite_steps", 0) + int(skipped)
        self.state["nonfinite_streak"] = self.state.get("nonfinite_streak", 0) + 1 if skipped else 0
        if self.state["nonfinite_streak"] > self.cfg.train.max_nonfinite_steps:
            path = self.save(step)
            raise UserError(
                f"step {step}: the loss or gradient was NaN/inf in {self.state['nonfinite_streak']} steps in a row "
                f"(train.max_nonfinite_steps={self.cfg.train.max_nonfinite_steps}); those updates were skipped. "
                f"Lower optim.lr or raise optim.grad_clip; checkpoint saved at {path}; resume with --resume {self.run_dir}"
            )

    def summary(self) -> dict:
        evals = self.state["evals"]
        peaks = ray.get([a.peak_memory_bytes.remote() for a in [self.learner, *self.rollout, *self.rewarders]])
        return {
            "run_dir": str(self.run_dir),
            "steps": self.state["step"],
            "samples": self.state["samples"],
            "tokens_generated": self.state["tokens"],
            "train_seconds": round(self.state["train_seconds"], 1),
            "wall_seconds": round(time.perf_counter() - self.started, 1),
            "initial_accuracy": round(evals[0]["eval/accuracy"], 4),
            "final_accuracy": round(evals[-1]["eval/accuracy"], 4),
            "best_accuracy": round(max(e["eval/accuracy"] for e in evals), 4),
            "best_step": max(evals, key=lambda e: e["eval/accuracy"])["step"],
            # engine statistics over the run's training rollouts, merged as in rlft.rollout.types.ENGINE_STATS
            **{f"rollout/{k}": round(v, 4) for k, v in self.state.get("rollout", {}).items()},
            "peak_memory_mb": {
                "learner": round(peaks[0] / 2**20),
                "rollout": round(max(peaks[1 : 1 + len(self.rollout)]) / 2**20),
                "reward": round(max(peaks[1 + len(self.rollout) :]) / 2**20),
            },
        }


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records past `last_step` (written after the checkpoint a resumed run starts from)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def make_run_dir(cfg: RLConfig) -> Path:
    name = cfg.train.run_name or f"{cfg.algo.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.train.output_dir) / name
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"run folder {run_dir} already exists; pick another train.run_name or resume it with --resume {run_dir}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(config_to_yaml(cfg))
    return run_dir


def train(cfg: RLConfig, resume_dir: Path | None = None) -> dict:
    """Run (or resume) training; returns the summary, also saved as summary.json in the run folder."""
    started = time.perf_counter()
    run_dir = resume_dir if resume_dir is not None else make_run_dir(cfg)
    started_ray = ray_session(cfg)
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir, started)
        if resume_dir is not None and (latest := ckpt.latest_checkpoint(run_dir)) is not None:
            trainer.restore(latest)
            log.warning("resuming %s from step %d", run_dir, trainer.state["step"])
        summary = trainer.run()
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_curves(run_dir)
        return summary
    finally:
        if trainer is not None and not started_ray:  # on a shared cluster, remove only our actors
            learners = trainer.learner.workers if isinstance(trainer.learner, LearnerGroup) else [trainer.learner]
            for actor in [*learners, *trainer.rollout, *trainer.rewarders]:
                ray.kill(actor)
        close_ray(started_ray)
