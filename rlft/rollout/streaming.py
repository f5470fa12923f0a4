"""Groups from the rollout workers the moment they complete, and their rewards from the reward workers
while the rest of the batch is still decoding.

`GroupStream` runs the rollout workers' prompts (each worker a Ray streaming generator) and yields
(prompt index, group) in completion order (a worker's last item, (None, engine stats), goes to `stats`); `score_groups` sends each fixed chunk of consecutive
prompts to a reward worker as soon as its last group has arrived. Chunks are fixed by prompt index,
never by arrival, so the reward calls, and the rewards, are the same however the decoding interleaves.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable, Iterable, Iterator

import ray
import torch

from rlft.errors import UserError
from rlft.rollout.types import SamplingParams

log = logging.getLogger("rlft")


class StaleWeights(RuntimeError):
    """A rollout worker does not hold the weights the caller expects: Ray restarted it between calls."""


# what a call on a worker that died (or that Ray is restarting, or restarted unseen) raises
WORKER_LOST = (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, StaleWeights)


def wait_until_serving(actor, name: str, timeout_s: float | None) -> None:
    """Block until a restarted actor answers a call; calls fail fast while Ray restarts it, so retry."""
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else float("inf"))
    while True:
        try:
            ray.get(actor.peak_memory_bytes.remote(), timeout=max(0.1, deadline - time.monotonic()))
            return
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        except ray.exceptions.GetTimeoutError:
            break
        except ray.exceptions.RayActorError as e:
            raise UserError(f"{name} could not be restarted ({type(e).__name__}: its restarts, train.max_restarts, "
                            "are used up or it fails at start); see the worker's log above") from None
    raise UserError(f"{name} did not come back within train.worker_timeout_s={timeout_s} s after a restart")


@dataclasses.dataclass
class WorkerWatch:
    """How waits on workers are bounded: a worker silent for `timeout_s` is reported and killed (Ray
    restarts it); `revive(actor, phase)` blocks until a restarted worker serves again (with the current
    weights); `counts` collects restarts and timeouts for the metrics."""

    timeout_s: float | None = None
    revive: Callable[[object, str], None] | None = None
    weights_version: int | None = None  # what rollout workers must hold (None: not checked)
    counts: dict[str, int] = dataclasses.field(default_factory=lambda: {"restarts": 0, "timeouts": 0})

    def timed_out(self, actor, name: str, phase: str) -> None:
        """Report a worker past its deadline by name and phase, then kill it so that Ray restarts it."""
        log.warning("%s gave no reply in %.0f s during %s; treating it as dead (restarting it)", name,
                    self.timeout_s, phase)
        self.counts["timeouts"] += 1
        ray.kill(actor, no_restart=False)

    def restarted(self, actor, name: str, phase: str, error: Exception) -> None:
        """A worker died: wait for Ray's restart of it (and its weights), or re-raise when there is no way back."""
        if self.revive is None:
            raise error
        log.warning("%s died during %s (%s); restarting it and re-sending its unfinished work", name, phase,
                    type(error).__name__)
        self.counts["restarts"] += 1
        self.revive(actor, phase)


@dataclasses.dataclass
class _Part:
    worker: object
    name: str
    prompts: list[list[int]]
    offset: int  # index of its first prompt in the call


class GroupStream:
    """Iterates (prompt index, completion dicts) over all rollout workers as groups complete;
    afterwards `groups` holds every group in prompt order."""

    def __init__(self, workers: list, parts: list[list[list[int]]], params: SamplingParams,
                 stats: list[dict[str, float]] | None = None, watch: WorkerWatch | None = None, phase: str = "rollout"):
        """`parts[i]`: the consecutive prompts (token ids) of worker i; each worker's engine statistics for
        this call (rlft.rollout.types.ENGINE_STATS) are appended to `stats` when its stream ends. With a
        `watch`, a worker that dies or stays silent past its deadline is restarted and its unfinished
        prompts are sent again with their original prompt indices (so the same seeds and completions)."""
        self.groups: list[list[dict] | None] = [None] * sum(map(len, parts))
        self.stats = stats if stats is not None else []
        self.params, self.watch, self.phase = params, watch or WorkerWatch(), phase
        self._pending: dict = {}  # ObjectRefGenerator -> the _Part it decodes
        self._heard: dict[int, float] = {}  # id(worker) -> when it was last sent work or yielded an item
        offset = 0
        for i, (worker, part) in enumerate(zip(workers, parts)):
            if part:
                self._send(_Part(worker, f"rollout worker {i}", part, offset))
            offset += len(part)

    def _send(self, part: _Part) -> None:
        params = dataclasses.replace(self.params, prompt_index_offset=self.params.prompt_index_offset + part.offset)
        version = {} if self.watch.weights_version is None else {"weights_version": self.watch.weights_version}
        self._pending[part.worker.stream.remote(part.prompts, params, **version)] = part
        self._heard[id(part.worker)] = time.monotonic()

    def _wait(self) -> list:
        """A stream with its next item ready; [] when some worker has been silent past its deadline (that
        worker is then reported and killed: its streams fail and are restarted by the caller)."""
        timeout = self.watch.timeout_s
        if timeout is None:
            return ray.wait(list(self._pending), num_returns=1)[0]
        workers = {id(p.worker): p for p in self._pending.values()}
        left = min(self._heard[w] for w in workers) + timeout - time.monotonic()
        ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=max(0.0, left))
        if not ready:
            now = time.monotonic()
            for w, part in workers.items():
                if now - self._heard[w] >= timeout:
                    self.watch.timed_out(part.worker, part.name, self.phase)
                    self._heard[w] = now
        return ready

    def _resend_unfinished(self, part: _Part) -> None:
        """The prompts of `part` whose groups have not arrived, as contiguous runs with their own offsets."""
        run: list[int] = []
        for local in range(len(part.prompts) + 1):
            missing = local < len(part.prompts) and self.groups[part.offset + local] is None
            if missing:
                run.append(local)
            elif run:
                self._send(_Part(part.worker, part.name, part.prompts[run[0] : run[-1] + 1], part.offset + run[0]))
                run = []

    def __iter__(self) -> Iterator[tuple[int, list[dict]]]:
        while self._pending:
            ready = self._wait()
            if not ready:
                continue  # a silent worker was killed: its streams now fail, and the code below restarts them
            stream = ready[0]
            part = self._pending[stream]
            try:
                index, group = ray.get(next(stream))
                self._heard[id(part.worker)] = time.monotonic()
            except StopIteration:
                del self._pending[stream]
                continue
            except WORKER_LOST as e:  # every stream of that worker is gone with it
                lost = [self._pending.pop(s) for s in list(self._pending) if self._pending[s].worker is part.worker]
                self.watch.restarted(part.worker, part.name, self.phase, e)
                for dead in lost:
                    self._resend_unfinished(dead)
                continue
            if index is None:
                self.stats.append(group)
                continue
            # a worker sends (index, group), or ([indices], [groups]) for the groups one engine step completed
            for index, group in zip(index, group) if isinstance(index, list) else [(index, group)]:
                index += part.offset
                self.groups[index] = group
                yield index, group

    def collect(self) -> list[list[dict]]:
        """Every group, in prompt order (consumes what is left of the stream)."""
        for _ in self:
            pass
        return self.groups  # type: ignore[return-value]


def score_groups(
    rewarders: list, rows: list[dict], groups: list[list[dict] | None], arrivals: Iterable[int],
    watch: WorkerWatch | None = None,
) -> tuple[torch.Tensor, dict]:
    """Rewards [prompts, G] in prompt order and the reward metrics. `groups` fills up as `arrivals` yields
    prompt indices (a GroupStream's `groups` and indices, or a finished list and its range); each chunk of
    consecutive prompts goes to a reward worker as soon as its last group is in. With a `watch`, a chunk
    whose worker dies or passes its deadline is scored again by the restarted worker."""
    watch = watch or WorkerWatch()
    chunk = max(1, -(-len(rows) // (4 * len(rewarders))))  # ~4 chunks per reward worker: overlap, few calls
    chunks = [list(range(start, min(start + chunk, len(rows)))) for start in range(0, len(rows), chunk)]
    missing = [len(c) for c in chunks]
    futures: list = [None] * len(chunks)
    lives = [0] * len(rewarders)  # restarts of each worker seen here
    sent_to_life = [0] * len(chunks)  # the life of its worker a chunk was sent to

    def send(c: int):
        part = [(rows[i]["prompt"], s["text"], rows[i]) for i in chunks[c] for s in groups[i]]
        sent_to_life[c] = lives[c % len(rewarders)]
        worker = rewarders[c % len(rewarders)]
        return worker.score.remote([p for p, _, _ in part], [t for _, t, _ in part], [r for _, _, r in part])

    for index in arrivals:
        c = index // chunk
        missing[c] -= 1
        if missing[c] == 0:
            futures[c] = send(c)
    results = []
    for c, future in enumerate(futures):
        worker, name = rewarders[c % len(rewarders)], f"reward worker {c % len(rewarders)}"
        while True:
            try:
                results.append(ray.get(future, timeout=watch.timeout_s))
                break
            except ray.exceptions.GetTimeoutError:
                watch.timed_out(worker, name, "reward")  # the next get fails and the chunk is sent again
            except WORKER_LOST as e:
                if sent_to_life[c] == lives[c % len(rewarders)]:  # not a chunk lost in a death already handled
                    watch.restarted(worker, name, "reward", e)
                    lives[c % len(rewarders)] += 1
                future = send(c)
    sizes = [sum(len(groups[i]) for i in c) for c in chunks]
    total = sum(sizes)
    metrics: dict[str, float] = {}
    for (_, part_metrics), size in zip(results, sizes):
        for k, v in part_metrics.items():  # counts add up; per-sample means are re-weighted by chunk size
            counted = k.endswith(("failures", "timeouts", "worker_restarts")) or k == "reward/time_s"
            metrics[k] = metrics.get(k, 0.0) + (v if counted else v * size / total)
    rewards = torch.tensor([r for values, _ in results for r in values], dtype=torch.float32)
    return rewards.view(len(rows), -1), metrics
