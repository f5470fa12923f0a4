"""The single controller: rollout -> reward -> learner -> weight sync, one step at a time (on-policy), or
with the next steps' rollouts drawn while the learner trains (`train.mode=async`, see async_rollout.py).

Reads top to bottom: `train()` sets up the run folder and Ray, `Trainer.run()` is the loop.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
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
from rlft.learner.types import TrainBatch
from rlft.models.loading import context_length, load_tokenizer
from rlft.pipeline import checkpoint as ckpt
from rlft.pipeline.actors import start_actors
from rlft.pipeline.async_rollout import Draw, RolloutQueue
from rlft.pipeline.batch import build_step_batch
from rlft.pipeline.faults import LearnerLost, learner_get
from rlft.pipeline.learner_group import LearnerGroup
from rlft.pipeline.loggers import Trackers
from rlft.pipeline.process import CoreShare, lends_idle_cores
from rlft.pipeline.ray_session import close_ray, ray_session
from rlft.pipeline.report import plot_curves
from rlft.pipeline.shaping import GroupSampler
from rlft.reward import RewardFailureError, check_failure_rate
from rlft.rollout.streaming import WORKER_LOST, GroupStream, WorkerWatch, score_groups, wait_until_serving
from rlft.rollout.types import SamplingParams, merge_engine_stats

log = logging.getLogger("rlft")
IN_FLIGHT = "in_flight.pt"  # async mode: the draws a checkpoint held in flight
DRIVER_TORCH_THREADS = 1  # the driver process's torch threads during a run (see train)


def split_evenly(items: list, parts: int) -> list[list]:
    """`items` cut into `parts` contiguous slices whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(items[start:end])
        start = end
    return out


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: which run, how many steps finished and the checkpoint that holds them."""

    def __init__(self, run_dir: Path, step: int, saved: Path | None):
        super().__init__(str(run_dir))
        self.run_dir, self.step, self.saved = run_dir, step, saved


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
        # ray.lend_idle_cores: the driver marks the rollout side busy from a draw's submission to its end (the queue
        # of draws), the learner marks its steps; each borrows the other's cores while it idles (CoreShare)
        share = CoreShare.create() if lends_idle_cores(cfg) else None
        self.cores = CoreShare.open(share, CoreShare.ROLLOUT, 0)
        self.rollout, self.rewarders, self.learner = start_actors(cfg, share)
        self.eval_prompt_ids = [self._tokenize(r["prompt"]) for r in self.task.eval_rows]
        self.state = self._initial_state()
        self.learner_restarts = 0
        self.learner_life: str | None = None  # the learner's incarnation whose state the run trusts
        self.counted: dict[str, int] = {}  # fault counts already reported in the metrics
        self.saved_step = 0  # the step of the newest checkpoint this process wrote or loaded
        self.updating = False  # an unfinished step has changed the learner or the state
        self.predictors: list = []  # refs to the rollout workers' length predictors after the last step
        self.watch = WorkerWatch(cfg.train.worker_timeout_s, self.revive)  # docs/methods.md#faults
        self.weights = None  # ref to the weights the rollout workers hold (a restarted one gets them again)
        self.sampler = GroupSampler(cfg, self.task, self._tokenize, self.generate, self.score)
        self.engine_stats: list[dict[str, float]] = []  # per worker and generate call, since the draw began
        self.rollouts: RolloutQueue | None = None  # async mode: the batches drawn ahead (made when the loop starts)
        self._in_flight: list[Draw] = []  # async mode: draws a restored checkpoint held in flight
        self.trackers = Trackers(cfg.train.loggers, run_dir, cfg.model_dump(mode="json"))

    @staticmethod
    def _initial_state() -> dict:
        return {"step": 0, "evals": [], "samples": 0, "tokens": 0, "train_seconds": 0.0}

    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    # --- the phases of a step -----------------------------------------------------------------

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams, stream: bool = False):
        """Groups for `prompt_ids` in prompt order, the prompts dealt evenly to the rollout workers; with
        `stream`, a GroupStream that yields each group the moment it completes (hand it to `score`)."""
        groups = GroupStream(self.rollout, split_evenly(prompt_ids, len(self.rollout)), params, self.engine_stats,
                             self.watch)
        return groups if stream else groups.collect()

    def score(self, rows: list[dict], groups: list[list[dict]] | GroupStream) -> tuple[torch.Tensor, dict]:
        """Rewards [prompts, G] in prompt order and the reward metrics. A GroupStream is scored while it
        decodes: each chunk of consecutive prompts goes to a reward worker once its groups are in."""
        if isinstance(groups, GroupStream):
            return score_groups(self.rewarders, rows, groups.groups, (index for index, _ in groups), self.watch)
        return score_groups(self.rewarders, rows, groups, range(len(groups)), self.watch)

    def _rollout_weights(self):
        """A ref to the learner's weights as the rollout workers hold them (in rollout.dtype, when set)."""
        return self.learner.rollout_weights.remote(self.cfg.rollout.dtype)

    def sync_weights(self, weights=None) -> None:
        """Learner -> object store -> every rollout worker (one put, many gets); `weights`: a ref to the learner's
        weights taken earlier (async mode), else the current ones."""
        timeout = self.cfg.train.worker_timeout_s
        weights = self._rollout_weights() if weights is None else weights
        if not ray.wait([weights], timeout=timeout)[0]:
            learner_get(weights, self.learner, "weight sync", 0)  # past its deadline: raises LearnerLost
        self.weights = weights
        self.watch.weights_version = (self.watch.weights_version or 0) + 1
        for i, worker in enumerate(self.rollout):
            try:
                ray.get(worker.load_weights.remote(weights, self.watch.weights_version), timeout=timeout)
            except ray.exceptions.GetTimeoutError:
                self.watch.timed_out(worker, f"rollout worker {i}", "weight sync")
                self.revive(worker, "weight sync")  # loads the weights once it is back
            except WORKER_LOST as e:
                self.watch.restarted(worker, f"rollout worker {i}", "weight sync", e)

    def _check_learner(self) -> None:
        """Learn which start of the learner process holds the run's state: Ray restarts a learner killed while it
        idles without anyone noticing, and it then holds the initial weights, so every update and save names
        this incarnation and a restarted learner refuses them (LearnerWorker._expect -> LearnerLost)."""
        if not isinstance(self.learner, LearnerGroup):
            self.learner_life = learner_get(self.learner.incarnation.remote(), self.learner, "learner check",
                                            self.cfg.train.worker_timeout_s)

    def _expected(self) -> tuple:
        """The incarnation argument of the learner's train_step and save (a DeepSpeed LearnerGroup takes none)."""
        if isinstance(self.learner, LearnerGroup):
            return ()
        if self.learner_life is None:
            self._check_learner()
        return (self.learner_life,)

    def revive(self, actor, phase: str) -> None:
        """A worker Ray restarted: wait until it serves; a rollout worker then gets the current weights."""
        rollout = [i for i, w in enumerate(self.rollout) if w is actor]
        name = f"rollout worker {rollout[0]}" if rollout else "a reward worker"
        wait_until_serving(actor, name, self.cfg.train.worker_timeout_s)
        if rollout and self.weights is not None:
            ray.get(actor.load_weights.remote(self.weights, self.watch.weights_version),
                    timeout=self.cfg.train.worker_timeout_s)

    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy of the current policy (greedy unless rollout.eval_temperature > 0)."""
        r = self.cfg.rollout
        params = SamplingParams(
            n=1, temperature=r.eval_temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens, stop=r.stop,
            seed=self.cfg.train.seed,
        )
        rewards, scores = self.score(self.task.eval_rows, self.generate(self.eval_prompt_ids, params, stream=True))
        threshold = self.cfg.train.eval_accuracy_threshold
        out = {"eval/accuracy": float((rewards >= threshold).float().mean()), "eval/reward": float(rewards.mean())}
        for spec in self.cfg.reward.functions:  # each function's mean too (e.g. math_format@0: answers stated)
            if f"reward/{spec.name}" in scores:
                out[f"eval/reward/{spec.name}"] = scores[f"reward/{spec.name}"]
        return out

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
        batch = None
        if len(groups) and not (self.cfg.algo.kl_coef > 0 and self.cfg.algo.kl_mode == "reward"):
            batch, prepared = self._learner_batch(groups)
            metrics.update(prepared)
        return Draw(step, version, groups, metrics, dict(self.sampler.timings), dict(self.sampler.generated), engine,
                    batch)

    def _learner_batch(self, groups) -> tuple[TrainBatch, dict[str, float]]:
        """The learner batch of a draw's groups (advantages, once, after a KL reward penalty) and its metrics."""
        cfg, timeout = self.cfg, self.cfg.train.worker_timeout_s
        batch, metrics = build_step_batch(
            groups, cfg.algo, cfg.rollout.max_new_tokens, self.tokenizer.pad_token_id,
            reference=lambda b: learner_get(self.learner.reference_logprobs.remote(b), self.learner,
                                            "reference log-probs", timeout),
        )
        correct = groups.rewards >= cfg.train.eval_accuracy_threshold  # lengths and weights of right/wrong
        lengths = batch.response_mask.sum(dim=1).view_as(correct)
        metrics.update(weight_statistics(batch.weights, batch.advantages, lengths, correct))
        return batch, metrics

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        if self.rollouts is None:
            drawn = self.draw(step, step - 1)
        else:  # async: submit the draws up to step + max_staleness, then take this step's (drawn earlier)
            self.rollouts.fill(step, self._rollout_weights, step - 1)
            drawn = self.rollouts.take(step)
        groups, metrics = drawn.groups, drawn.metrics
        self.updating = True  # from here on the step changes the learner and the state
        t2 = time.perf_counter()
        self.state["rollout"] = merge_engine_stats(self.state.get("rollout", {}), drawn.engine)
        if len(groups):
            timeout = cfg.train.worker_timeout_s
            batch = drawn.batch
            if batch is None:  # the KL is charged to the rewards: the learner's reference log-probs, between steps
                batch, prepared = self._learner_batch(groups)
                metrics.update(prepared)
            metrics.update(learner_get(self.learner.train_step.remote(batch, *self._expected()), self.learner, "learner step", timeout))
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
        learner_get(self.learner.save.remote(str(tmp), *self._expected()), self.learner, "checkpoint save", self.cfg.train.worker_timeout_s)
        self.tokenizer.save_pretrained(tmp)
        if self.rollouts is not None:  # async: the draws in flight were made by older weights; keep them
            torch.save(self.rollouts.wait(), tmp / IN_FLIGHT)
            self.state["sampler"] = self.sampler.state_dict()
        # the rollout workers' length predictors as they were when step `step` ended (None for a worker that
        # died since: its restart began a new one)
        torch.save([self._get_or_none(ref) for ref in self.predictors or [w.length_predictor.remote() for w in self.rollout]],
                   tmp / "length_predictors.pt")
        self.saved_step = step
        return ckpt.commit_checkpoint(self.run_dir, step, tmp, self.state, self.cfg.train.keep_checkpoints)

    def _get_or_none(self, ref):
        try:
            return ray.get(ref, timeout=self.cfg.train.worker_timeout_s)
        except (*WORKER_LOST, ray.exceptions.GetTimeoutError):
            return None

    def save_finished_steps(self) -> Path | None:
        """On Ctrl-C: a checkpoint of the steps finished since the last one; None when an update was in flight
        (the learner's weights are then ahead of the finished steps) or nothing is new."""
        if self.updating or self.state["step"] == self.saved_step:
            return None
        return self.save(self.state["step"])

    def restore(self, path: Path) -> None:
        loaded = learner_get(self.learner.load.remote(str(path)), self.learner, "checkpoint load",
                             self.cfg.train.worker_timeout_s)
        self.state = json.loads((path / "trainer_state.json").read_text())
        self.saved_step = self.state["step"]
        self.sampler.load_state_dict(self.state.get("sampler", {}))  # TPO arm statistics survive a resume
        self._in_flight = torch.load(path / IN_FLIGHT, weights_only=False) if (path / IN_FLIGHT).is_file() else []
        # the start of the learner that loaded this state is the one to trust (LearnerWorker.load returns it)
        self.learner_life = None if isinstance(self.learner, LearnerGroup) else loaded
        predictors = path / "length_predictors.pt"
        if predictors.is_file():
            states = torch.load(predictors, weights_only=False)
            if len(states) == len(self.rollout):
                ray.get([w.load_length_predictor.remote(p) for w, p in zip(self.rollout, states)])
        self.sync_weights()
        if self.rollouts is not None:  # a rollback in async mode: the queue starts again from the checkpoint
            self._start_rollouts()

    def _start_rollouts(self) -> None:
        """Async mode: a fresh queue of draws ahead, holding the draws a restored checkpoint had in flight."""
        if self.rollouts is not None:
            self.rollouts.close(wait=True)  # no two threads may talk to the rollout workers at once
        t = self.cfg.train
        self.rollouts = RolloutQueue(self.draw, self.sync_weights, t.max_staleness, t.steps,
                                     self.cores.mark if self.cores else None, t.on_policy_steps)
        self.rollouts.restore(self._in_flight)

    # --- the loop -----------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        metrics_path = self.run_dir / "metrics.jsonl"
        _truncate_metrics(metrics_path, self.state["step"])
        if cfg.train.mode == "async":
            self._start_rollouts()
        if not self.state["evals"]:
            self._record_eval(0, metrics_path)
        bar = tqdm(total=cfg.train.steps, initial=self.state["step"], desc="rlft", unit="step",
                   disable=not cfg.train.progress, dynamic_ncols=True)
        try:
            self.time_up = False
            while self.state["step"] < cfg.train.steps and not self.time_up:
                try:
                    self._run_steps(metrics_path, bar)
                except LearnerLost as lost:
                    while lost is not None:  # the rollback itself talks to the learner, which may fail again
                        try:
                            self._roll_back(lost, metrics_path)
                            lost = None
                        except LearnerLost as again:
                            lost = again
                    bar.n = self.state["step"]
        finally:
            bar.close()
            if self.rollouts is not None:
                self.rollouts.close()
        return self.summary()

    def _run_steps(self, metrics_path: Path, bar: tqdm) -> None:
        cfg = self.cfg
        for step in range(self.state["step"] + 1, cfg.train.steps + 1):
            t0 = time.perf_counter()
            metrics = self.train_step(step)
            self.state["step"] = step
            self.predictors = [w.length_predictor.remote() for w in self.rollout]
            self.state["train_seconds"] += time.perf_counter() - t0
            metrics.update(self._fault_metrics())
            self._check_reward_failures(step, metrics)
            # train.max_minutes: this step ends the run (final evaluation and checkpoint as at train.steps)
            limit = cfg.train.max_minutes
            self.time_up = limit is not None and time.perf_counter() - self.started >= 60 * limit
            last = step == cfg.train.steps or self.time_up
            if (cfg.train.eval_every and step % cfg.train.eval_every == 0) or last:
                metrics.update(self._eval_now(step))
            self._record(metrics_path, metrics)
            self.updating = False  # step `step` is finished: state, weights and its metrics record agree
            self._check_nonfinite(step, metrics)
            if (cfg.train.save_every and step % cfg.train.save_every == 0) or last:
                self.save(step)
            bar.update(1)
            bar.set_postfix(
                reward=f"{metrics['reward/mean']:.3f}", acc=f"{self.state['evals'][-1]['eval/accuracy']:.3f}",
                tok_s=f"{metrics['throughput/rollout_tokens_per_s']:.0f}", refresh=False,
            )
            if last:
                return

    def _fault_metrics(self) -> dict[str, float]:
        """Restarts and timeouts since the previous step (metrics); their totals go to the state (summary)."""
        now = {"worker_restarts": self.watch.counts["restarts"], "worker_timeouts": self.watch.counts["timeouts"],
               "learner_restarts": self.learner_restarts}
        totals = self.state.setdefault("faults", {})
        out = {}
        for k, v in now.items():
            out[f"faults/{k}"] = float(v - self.counted.get(k, 0))
            totals[k] = totals.get(k, 0) + v - self.counted.get(k, 0)
        self.counted = now
        return out

    def _roll_back(self, lost: LearnerLost, metrics_path: Path) -> None:
        """The learner died or hung: Ray restarts it; it resumes from the last checkpoint (or from the start)."""
        limit = self.cfg.train.max_restarts
        if isinstance(self.learner, LearnerGroup) or self.learner_restarts >= limit:
            raise UserError(f"{lost}; stopping after {self.learner_restarts} learner restarts (train.max_restarts="
                            f"{limit}). Resume with --resume {self.run_dir} (from its last checkpoint)") from None
        self.learner_restarts += 1
        log.warning("%s; restarting it from the last checkpoint (restart %d of %d)", lost, self.learner_restarts, limit)
        wait_until_serving(self.learner, "the learner", self.cfg.train.worker_timeout_s)
        faults = self.state.get("faults", {})
        latest = ckpt.latest_checkpoint(self.run_dir)
        if latest is not None:
            self.restore(latest)
        else:  # no checkpoint yet: the restarted learner holds the initial weights; so must the rollout workers
            self.state = {**self._initial_state(), "evals": self.state["evals"][:1]}
            self.saved_step = 0
            self.learner_life = None  # any start of the learner holds these: the next update asks which answers
            self.sync_weights()
            if self.rollouts is not None:
                self._in_flight = []
                self._start_rollouts()
        self.state["faults"] = faults
        self.updating = False
        _truncate_metrics(metrics_path, self.state["step"])

    def _eval_now(self, step: int) -> dict:
        if self.rollouts is not None:  # async: let the draws in flight finish, then evaluate this step's weights
            self.rollouts.wait()
            self.sync_weights()
        result = self.evaluate()
        self.state["evals"].append({"step": step, **result})
        return result

    def _record_eval(self, step: int, metrics_path: Path) -> None:
        result = self._eval_now(step)
        self._record(metrics_path, {"step": step, **result})

    def _record(self, metrics_path: Path, record: dict) -> None:
        """One record into metrics.jsonl and, under the same names, every tracker of train.loggers."""
        _append_jsonl(metrics_path, record)
        self.trackers.log(record)

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
        actors = [self.learner, *self.rollout, *self.rewarders]
        peaks = [self._get_or_none(a.peak_memory_bytes.remote()) or 0 for a in actors]
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
            # worker restarts, timeouts and learner restarts over the run (docs/methods.md#faults)
            "faults": dict(self.state.get("faults", {})),
            "nonfinite_steps": self.state.get("nonfinite_steps", 0),
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
    kept = [line for line in path.read_text().splitlines() if _record_step(line) <= last_step]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _record_step(line: str) -> float:
    """The step of a metrics record; infinity for a line a killed run left half-written (dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


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
    # The driver's tensor work is small (a step's batch from token lists, advantages, statistics): a second torch
    # thread only spins after each op, on the cores the actors compute on (async default: the driver took 0.21 of a
    # core, 0.09 on one thread; docs/measurements.md#driver-threads). The caller's count comes back at the end.
    threads = torch.get_num_threads()  # set after Ray starts: a start that fails leaves the count as it was
    torch.set_num_threads(DRIVER_TORCH_THREADS)
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir, started)
        if resume_dir is not None and (latest := ckpt.latest_checkpoint(run_dir)) is not None:
            trainer.restore(latest)
            log.warning("resuming %s from step %d", run_dir, trainer.state["step"])
        try:
            summary = trainer.run()
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir, trainer.state["step"], trainer.save_finished_steps()) from None
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        plot_curves(run_dir)
        return summary
    except BaseException:
        if resume_dir is None and not (run_dir / "metrics.jsonl").exists():
            shutil.rmtree(run_dir, ignore_errors=True)  # a run that never started leaves no folder behind
        raise
    finally:
        if trainer is not None:
            trainer.trackers.close()
        if trainer is not None and not started_ray:  # on a shared cluster, remove only our actors
            learners = trainer.learner.workers if isinstance(trainer.learner, LearnerGroup) else [trainer.learner]
            for actor in [*learners, *trainer.rollout, *trainer.rewarders]:
                ray.kill(actor)
        close_ray(started_ray)
        torch.set_num_threads(threads)
