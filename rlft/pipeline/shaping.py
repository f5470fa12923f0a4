"""Between rollout and learner: which scored groups a step trains on, and the rewards they carry.

`GroupSampler.draw(step)` is the step's rollout and reward phase:

- TPO (`transfer.sources`, docs/methods.md#transfer-tpo): per prompt a UCB-chosen arm; a source arm's group is
  G - r plain samples plus the r of N extra samples that source ranks highest.
- Overlong handling (`algo.overlong`): truncated responses are masked out of the loss ('filter')
  or the reward pays a soft length penalty over the last part of the budget ('penalty', DAPO).
- Group filtering (`algo.filter_groups`, DAPO's dynamic sampling): a group whose rewards are all equal has zero
  advantage everywhere, so it is dropped and fresh prompts are drawn, for at most
  `filter_groups_max_rounds` extra rounds; the step then trains on what it has.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import ray
import torch

from rlft.algorithms.transfer import NULL_ARM, UCBArms, compose_group, win_credit
from rlft.reward.registry import load_reward_fn
from rlft.reward.scorer import _metric_names
from rlft.rollout.types import SamplingParams


@dataclass
class Groups:
    """B scored groups of G completions (completion dicts as the rollout workers return them)."""

    rows: list[dict]
    prompt_ids: list[list[int]]
    completions: list[list[dict]]
    rewards: torch.Tensor  # [B, G] target reward, after overlong shaping
    keep: torch.Tensor  # [B, G] bool: the response enters the loss

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, index: list[int]) -> "Groups":
        return Groups(
            [self.rows[i] for i in index], [self.prompt_ids[i] for i in index],
            [self.completions[i] for i in index], self.rewards[index], self.keep[index],
        )

    def extend(self, other: "Groups") -> "Groups":
        return Groups(
            self.rows + other.rows, self.prompt_ids + other.prompt_ids, self.completions + other.completions,
            torch.cat([self.rewards, other.rewards]), torch.cat([self.keep, other.keep]),
        )


def overlong_shaping(
    completions: list[list[dict]], rewards: torch.Tensor, algo_cfg, max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards [B, G] after the soft overlong penalty, and the keep mask [B, G] of overlong filtering.

    penalty(|o|) = -overlong_penalty * clamp((|o| - (L - C)) / C, 0, 1) with L = max_new_tokens and
    C = overlong_buffer * L (at least one token): 0 up to L - C, then linear down to -overlong_penalty.
    """
    truncated = torch.tensor([[c["finish_reason"] == "length" for c in g] for g in completions], dtype=torch.bool)
    keep = torch.ones_like(truncated)
    if algo_cfg.overlong == "filter":
        keep = ~truncated
    elif algo_cfg.overlong == "penalty":
        lengths = torch.tensor([[len(c["token_ids"]) for c in g] for g in completions], dtype=torch.float32)
        buffer = max(1.0, algo_cfg.overlong_buffer * max_new_tokens)
        over = ((lengths - (max_new_tokens - buffer)) / buffer).clamp(0.0, 1.0)
        rewards = rewards - algo_cfg.overlong_penalty * over
    return rewards, keep


def informative_groups(rewards: torch.Tensor) -> list[int]:
    """Indices of the groups whose rewards are not all equal (the others have zero advantage)."""
    return (rewards.max(dim=1).values > rewards.min(dim=1).values).nonzero().flatten().tolist()


def sampling_seed(base: int, step: int, round_: int = 0, part: int = 0) -> int:
    """Seed of one generate call: `base * 1_000_003 + step` for the step's main call, distinct otherwise."""
    if round_ == 0 and part == 0:
        return base * 1_000_003 + step
    return hash((base, step, round_, part)) % 2**31  # ints hash the same in every process


def start_source_scorers(cfg) -> dict[str, Callable[[list, list, list], list[float]]]:
    """One reward actor per `transfer.sources` entry, by arm name: `scorer(prompts, completions, rows) -> scores`."""
    from rlft.pipeline.reward_actor import RewardWorker

    worker = ray.remote(num_cpus=0)(RewardWorker)
    scorers = {}
    for name, spec in zip(_metric_names([s.name for s in cfg.transfer.sources]), cfg.transfer.sources):
        load_reward_fn(spec.name)  # a bad spec fails here, at start, with the reward loader's message
        actor = worker.remote(cfg.model_copy(update={"reward": cfg.reward.model_copy(update={"functions": [spec]})}))

        def scorer(prompts, completions, rows, actor=actor) -> list[float]:
            return ray.get(actor.score.remote(prompts, completions, rows))[0]

        scorers[name] = scorer
    return scorers


class GroupSampler:
    """The step's scored groups from the task, through the Trainer's `generate(prompt_ids, params, stream)`
    and `score(rows, groups or stream)`.

    `sources` (arm name -> scorer) defaults to reward actors for `transfer.sources`.
    """

    def __init__(self, cfg, task, tokenize, generate, score, sources: dict | None = None):
        self.cfg, self.task, self.tokenize = cfg, task, tokenize
        self._generate, self._score = generate, score
        self.sources, self.arms = {}, None
        if cfg.transfer.sources:
            self.sources = sources if sources is not None else start_source_scorers(cfg)
            t = cfg.transfer
            self.arms = UCBArms(list(self.sources), t.beta, t.null_bar, t.refresh_prompts)
        self.timings = {"rollout": 0.0, "reward": 0.0}  # this step's seconds
        self.generated = {"samples": 0, "tokens": 0, "scored": 0}  # this step's; "scored": by the target reward

    def draw(self, step: int) -> tuple[Groups, dict[str, float]]:
        """The groups to train on and the step's metrics (rewards, lengths: of the first round's groups)."""
        algo, size = self.cfg.algo, self.cfg.rollout.prompts_per_step
        self.timings = {"rollout": 0.0, "reward": 0.0}
        self.generated = {"samples": 0, "tokens": 0, "scored": 0}
        rounds = 1 + (algo.filter_groups_max_rounds if algo.filter_groups else 0)
        kept, metrics = None, {}
        for k in range(rounds):
            # round k takes the next `size` prompts of the step's stream (the first round: the usual batch)
            rows = self.task.train_batch(step, size * (k + 1))[size * k :]
            groups, round_metrics = self._sample(rows, sampling_seed(self.cfg.train.seed, step, k))
            if k == 0:
                metrics = round_metrics
            if algo.filter_groups:
                groups = groups.select(informative_groups(groups.rewards))
            kept = groups if kept is None else kept.extend(groups)
            if len(kept) >= size:
                break
        kept = kept.select(list(range(min(size, len(kept)))))
        if algo.filter_groups:
            metrics["shaping/rounds"] = k + 1
            metrics["shaping/kept_groups"] = len(kept)
        if self.arms is not None:
            metrics.update(self.arms.metrics())
        return kept, metrics

    def _sample(self, rows: list[dict], seed: int) -> tuple[Groups, dict[str, float]]:
        r = self.cfg.rollout
        prompt_ids = [self.tokenize(row["prompt"]) for row in rows]
        params = SamplingParams(
            n=r.group_size, temperature=r.temperature, top_p=r.top_p, max_new_tokens=r.max_new_tokens,
            stop=r.stop, seed=seed,
        )
        if self.arms is None:  # the target reward scores each chunk of groups while the rest still decodes
            start = time.perf_counter()
            stream = self._generate(prompt_ids, params, stream=True)
            rewards, metrics = self._score(rows, stream)
            self.timings["rollout"] += time.perf_counter() - start
            completions, arms, transferred = getattr(stream, "groups", stream), None, None
            self._count(completions)
        else:  # groups are composed before the target reward can see them
            completions, arms, transferred = self._transfer_sample(rows, prompt_ids, params)
            start = time.perf_counter()
            rewards, metrics = self._score(rows, completions)
            self.timings["reward"] += time.perf_counter() - start
        self.generated["scored"] += rewards.numel()
        if arms is not None:
            for i, arm in enumerate(arms):
                if arm != NULL_ARM:
                    self.arms.record(arm, win_credit(rewards[i].tolist(), transferred[i]))
        metrics.update(_group_metrics(completions, rewards, self.cfg.train.eval_accuracy_threshold))
        shaped, keep = overlong_shaping(completions, rewards, self.cfg.algo, r.max_new_tokens)
        return Groups(rows, prompt_ids, completions, shaped, keep), metrics

    def _transfer_sample(self, rows, prompt_ids, params):
        """Per prompt an arm; null: G plain samples; a source: G - r plain + its top r of N extra samples.

        TPO draws G + N and keeps G - r random ones of the first G; i.i.d. samples make the first
        G - r exactly such a subset, so only G - r + N are drawn (and counted as generated).
        """
        t, g = self.cfg.transfer, params.n
        plain = g - t.num_transferred
        arms = self.arms.choose(len(rows))
        completions: list = [None] * len(rows)
        transferred = [[False] * g for _ in rows]
        null = [i for i, a in enumerate(arms) if a == NULL_ARM]
        for i, group in zip(null, self.generate([prompt_ids[i] for i in null], params)):
            completions[i] = group
        picked = [i for i, a in enumerate(arms) if a != NULL_ARM]
        wide = replace(params, n=plain + t.num_extra, seed=sampling_seed(params.seed, 0, 0, 1))
        drawn = dict(zip(picked, self.generate([prompt_ids[i] for i in picked], wide)))
        start = time.perf_counter()
        for arm, scorer in self.sources.items():
            mine = [i for i in picked if arms[i] == arm]
            if not mine:
                continue
            extra_rows = [rows[i] for i in mine for _ in range(t.num_extra)]
            extra_texts = [c["text"] for i in mine for c in drawn[i][plain:]]
            scores = scorer([row["prompt"] for row in extra_rows], extra_texts, extra_rows)
            for j, i in enumerate(mine):
                extra_scores = scores[j * t.num_extra : (j + 1) * t.num_extra]
                completions[i], transferred[i] = compose_group(drawn[i], extra_scores, plain, t.num_transferred)
        self.timings["reward"] += time.perf_counter() - start
        return completions, arms, transferred

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> list[list[dict]]:
        if not prompt_ids:
            return []
        start = time.perf_counter()
        groups = self._generate(prompt_ids, params)
        self.timings["rollout"] += time.perf_counter() - start
        self._count(groups)
        return groups

    def _count(self, groups: list[list[dict]]) -> None:
        self.generated["samples"] += sum(len(group) for group in groups)
        self.generated["tokens"] += sum(len(c["token_ids"]) for group in groups for c in group)

    def state_dict(self) -> dict:
        return {"arms": self.arms.state_dict()} if self.arms is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.arms is not None and "arms" in state:
            self.arms.load_state_dict(state["arms"])


def _group_metrics(completions: list[list[dict]], rewards: torch.Tensor, threshold: float) -> dict[str, float]:
    """Reward, accuracy, length and truncation statistics of scored groups (before any shaping)."""
    lengths = [len(c["token_ids"]) for g in completions for c in g]
    return {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "train/accuracy": float((rewards >= threshold).float().mean()),
        "train/equal_reward_groups": float((rewards.max(dim=1).values == rewards.min(dim=1).values).float().mean()),
        "response/length_mean": sum(lengths) / len(lengths),
        "response/truncated": sum(c["finish_reason"] == "length" for g in completions for c in g) / len(lengths),
    }
