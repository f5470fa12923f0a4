"""The Ray actors: rollout workers and the learner, each in its own process, and their start with the reward
workers (rlft/pipeline/reward_actor.py)."""

from __future__ import annotations

import contextlib
import uuid

import ray

from rlft.learner.learner import Learner
from rlft.models.flat_weights import FlatWeights
from rlft.models.loading import load_causal_lm, load_tokenizer, pick_device
from rlft.pipeline.faults import LearnerRestarted
from rlft.pipeline.learner_group import LearnerGroup
from rlft.pipeline.process import CoreShare, peak_rss_bytes, set_torch_threads, torch_threads
from rlft.pipeline.reward_actor import RewardWorker
from rlft.rollout.streaming import StaleWeights
from rlft.rollout.types import SamplingParams


class RolloutWorker:
    """Owns a generation engine over its copy of the policy; receives new weights each step."""

    def __init__(self, cfg, index: int, core_share: str | None = None):
        set_torch_threads(cfg)
        self.cfg = cfg
        self.index = index
        # ray.lend_idle_cores: every core while the learner idles, this worker's share while it computes
        self.cores = CoreShare.open(core_share, CoreShare.ROLLOUT, torch_threads(cfg))
        self.tokenizer = load_tokenizer(cfg.model)
        self.weights_version = 0  # the initial weights; the driver numbers each weight sync
        r = cfg.rollout
        model_cfg = cfg.model.model_copy(update={"dtype": r.dtype}) if r.dtype else cfg.model
        if r.engine == "vllm":
            from rlft.rollout.vllm_engine import VLLMEngine  # optional extra, imported only when chosen

            self.engine = VLLMEngine(model_cfg, r)
        else:
            from rlft.rollout.builtin import BuiltinEngine

            model = load_causal_lm(model_cfg, pick_device(r.device))
            self.engine = BuiltinEngine(model, self.tokenizer, max_slots=r.max_slots, scheduling=r.scheduling,
                                        micro_group_size=r.micro_group_size, probe_tokens=r.length_probe_tokens,
                                        kv_budget_tokens=r.kv_budget_tokens, fast_decode=r.fast_decode,
                                        before_step=self.cores.pick_threads if self.cores else None)

    def stream(self, prompt_ids: list[list[int]], params: SamplingParams, weights_version: int | None = None):
        """A Ray streaming generator: ([indices in `prompt_ids`], [groups as dicts]) the moment an engine step
        completes groups (one message for all of them: Ray's per-item cost is paid per step, not per group),
        then (None, the engine's statistics of this call). `weights_version`: the weights the caller expects
        (a worker Ray restarted in between holds the initial ones and refuses)."""
        if weights_version is not None and weights_version != self.weights_version:
            raise StaleWeights(f"rollout worker {self.index} holds weights version {self.weights_version}, "
                               f"expected {weights_version} (it was restarted)")
        if self.cores:  # (the driver marks the rollout side busy for the whole draw: CoreShare)
            self.cores.borrowed = 0
        for batch in self.engine.generate_group_batches(prompt_ids, params):
            yield [index for index, _ in batch], [[vars(c) for c in group] for _, group in batch]
        lent = {"borrowed_core_steps": float(self.cores.borrowed)} if self.cores else {}
        yield None, {**self.engine.stats(), **lent}

    def load_weights(self, state: FlatWeights, version: int = 0) -> None:
        self.engine.load_weights(state.state_dict())
        self.weights_version = version

    def length_predictor(self):
        """The engine's online length predictor (checkpointed, so a resumed run schedules as before)."""
        return getattr(self.engine, "predictor", None)

    def load_length_predictor(self, predictor) -> None:
        if predictor is not None and hasattr(self.engine, "predictor"):
            self.engine.predictor = predictor

    def peak_memory_bytes(self) -> int:
        return peak_rss_bytes()


class LearnerWorker(Learner):
    """The learner in its own process (see rlft.learner.learner.Learner)."""

    def __init__(self, cfg, core_share: str | None = None):
        set_torch_threads(cfg)
        super().__init__(cfg)
        self.life = uuid.uuid4().hex  # a new one each time Ray restarts the process
        # ray.lend_idle_cores: every core for a pass while the rollout worker idles, half while it generates
        self.cores = CoreShare.open(core_share, CoreShare.LEARNER, torch_threads(cfg))
        if self.cores:
            self.before_pass = self.cores.pick_threads
            self.cores.recheck_per_layer(self.model)

    def incarnation(self) -> str:
        """Which start of this actor answers: a change means Ray restarted it (with the initial weights)."""
        return self.life

    def _expect(self, incarnation: str | None) -> None:
        if incarnation is not None and incarnation != self.life:
            raise LearnerRestarted(f"expected incarnation {incarnation}, this is {self.life}")

    def train_step(self, batch, incarnation: str | None = None) -> dict[str, float]:
        """`Learner.train_step`, refused (LearnerRestarted) unless this is the start the driver trusts: checked
        here rather than by a call before it, so the check costs no round trip and leaves no window between."""
        self._expect(incarnation)
        if not self.cores:
            return super().train_step(batch)
        with self.cores.busy():
            self.cores.borrowed = self.cores.borrowed_layers = 0
            metrics = super().train_step(batch)
        return {**metrics, "learner/borrowed_core_passes": float(self.cores.borrowed),
                "learner/borrowed_core_layers": float(self.cores.borrowed_layers)}

    def reference_logprobs(self, batch):
        with self.cores.busy() if self.cores else contextlib.nullcontext():
            return super().reference_logprobs(batch)

    def save(self, path: str, incarnation: str | None = None) -> None:
        """`Learner.save`, refused like `train_step`: a restarted learner would save the initial weights."""
        self._expect(incarnation)
        super().save(path)

    def load(self, path: str) -> str:
        """`Learner.load`; returns this start's incarnation, the one that now holds the run's state."""
        super().load(path)
        return self.life

    def peak_memory_bytes(self) -> int:
        return max(super().peak_memory_bytes(), peak_rss_bytes())


def start_actors(cfg, core_share: str | None = None) -> tuple[list, list, object]:
    """Rollout workers, reward workers and the learner (an actor, or a LearnerGroup of DeepSpeed ranks
    called the same way), placed by their devices; `core_share`: the file of ray.lend_idle_cores (CoreShare)."""
    # vLLM's CPU build and the built-in engine on CPU need no GPU; 'auto' asks for one where the driver sees one
    rollout_gpus = 1 if pick_device(cfg.rollout.device).type == "cuda" else 0
    learner_gpus = 1 if pick_device(cfg.learner.device).type == "cuda" else 0
    # CPU actors ask Ray for no CPU slots: the sync loop runs one phase at a time and each actor
    # sets its own torch threads, so reserving cores would only stop small machines from starting.
    # a worker that dies is started again by Ray (its calls in flight fail; the driver re-sends them)
    restarts = cfg.train.max_restarts
    rollout_cls = ray.remote(num_cpus=0, num_gpus=rollout_gpus, max_restarts=restarts)(RolloutWorker)
    reward_cls = ray.remote(num_cpus=0, max_restarts=restarts)(RewardWorker)
    rollout = [rollout_cls.remote(cfg, i, core_share) for i in range(cfg.rollout.num_workers)]
    rewards = [reward_cls.remote(cfg) for _ in range(cfg.reward.num_workers)]
    if cfg.learner.backend == "deepspeed":
        learner = LearnerGroup(cfg, learner_gpus)
    else:
        learner = ray.remote(num_cpus=0, num_gpus=learner_gpus, max_restarts=restarts)(LearnerWorker).remote(cfg, core_share)
    return rollout, rewards, learner
