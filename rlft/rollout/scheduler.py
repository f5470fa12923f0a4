"""Which samples hold the decode slots, step by step: full-group, micro-group and Infinite-Sampling.

Time is counted in decode steps; a sample is (group, index in group). The engine asks which groups
to prefill (`admit`) and which samples to start (`start`), and reports probes that reached k tokens
(`park`) and finished samples (`finish`). The same object drives `simulate`, so scheduling can be
tested and compared on known lengths without a model.

- full: a group's G samples start together and hold their G slots until the last one ends.
- micro: rounds of g samples of a group start together and hold their g slots until the round ends.
- infinite (Wang et al. 2025, docs/methods.md#infinite-sampling): a freed slot is refilled at once, from the same or the next
  group. Each sample first decodes k tokens as a probe (short jobs first: the probes are what makes
  the lengths predictable), then waits, parked with its KV, until the plan gives it a slot back. The
  plan is LPT over the slots' predicted loads; its makespan C* is the budget at run time: a freed slot
  takes the longest waiting sample of the oldest group that still ends by C* (groups complete in order
  and few prompts stay open), else the shortest waiting sample (SJF), so a wrong prediction costs as
  little tail as possible.
  With a KV budget (`kv_budget`, response tokens), a sample starts only while the projected peak stays
  within it: running samples grow one token per step to their predicted length (times `kv_margin`, as
  predictions err short), parked and pending probes hold k each; a group is admitted only if its G probes
  fit too. Running samples are never preempted, so a sample that outruns its prediction can pass the
  budget. Whatever the budget, work starts when nothing runs, so a budget below one sample's length slows
  the call down but never stalls it.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Callable, Iterable, Literal

Mode = Literal["full", "micro", "infinite"]
Sample = tuple[int, int]


def lpt_makespan(lengths: Iterable[float], loads: list[float]) -> float:
    """Makespan of LPT (longest first onto the least loaded slot) given the slots' current `loads`."""
    heap = list(loads)
    heapq.heapify(heap)
    for length in sorted(lengths, reverse=True):
        heapq.heapreplace(heap, heap[0] + length)
    return max(heap)


class SlotScheduler:
    """Slot assignment for one call of the engine over `num_groups` groups of `group_size` samples."""

    def __init__(
        self,
        mode: Mode,
        slots: int,
        num_groups: int,
        group_size: int,
        micro_group_size: int,
        probe_tokens: int = 0,
        predict: Callable[[int, int], float] | None = None,
        kv_budget: float | None = None,
        kv_margin: Callable[[], float] = lambda: 1.0,
    ):
        unit = {"full": group_size, "micro": min(micro_group_size, group_size), "infinite": 1}[mode]
        if unit > slots:
            raise ValueError(f"scheduling '{mode}' starts {unit} samples together but there are only {slots} slots")
        self.mode, self.slots, self.free = mode, slots, slots
        self.group_size = group_size
        self.probe_tokens = probe_tokens if mode == "infinite" else 0
        self.predict = predict or (lambda g, j: 0.0)
        self.kv_budget = kv_budget if mode == "infinite" else None
        self.kv_margin = kv_margin  # factor on predicted lengths for the budget: predictions err short
        self.waiting_groups = deque(range(num_groups))
        self.unfinished = num_groups * group_size
        # full / micro: rounds (units) started in order, each holding its slots until its last sample ends
        self.rounds = deque(
            [(g, j) for j in range(start, min(start + unit, group_size))]
            for g in range(num_groups) for start in range(0, group_size, unit)
        ) if mode != "infinite" else deque()
        self.round_of: dict[Sample, list] = {}
        # infinite: probes to run, parked samples with predicted lengths, running samples' (start step, length
        # planned (a probe: k), tokens held at start)
        self.probes: deque[Sample] = deque()
        self.parked: dict[Sample, float] = {}
        self.running: dict[Sample, tuple[int, float, int]] = {}
        self.probing: set[Sample] = set()  # running samples that are probes
        self.plan_end: float | None = None

    @property
    def done(self) -> bool:
        return self.unfinished == 0

    def admit(self, now: int = 0) -> list[int]:
        """Groups to prefill now (their samples may start in the next `start`)."""
        admitted = []
        if self.mode != "infinite":
            free = self.free
            for members in self.rounds:
                if len(members) > free:
                    break
                free -= len(members)
                if self.waiting_groups and members[0][0] == self.waiting_groups[0]:
                    admitted.append(self.waiting_groups.popleft())
            return admitted
        # below one waiting sample per slot, admit up to two per slot: no slot idles while work exists,
        # and prefills come in batches
        if len(self.probes) + len(self.parked) >= self.slots:
            return admitted
        committed = self._projected_peak(now) if self.kv_budget is not None else 0.0
        while self.waiting_groups and len(self.probes) + len(self.parked) < 2 * self.slots:
            probes = self.group_size * self.probe_tokens
            if self.kv_budget is not None and committed + probes > self.kv_budget and (
                    self.probes or self.parked or self.running):
                break
            committed += probes
            g = self.waiting_groups.popleft()
            admitted.append(g)
            for j in range(self.group_size):
                if self.probe_tokens:
                    self.probes.append((g, j))
                else:
                    self.parked[(g, j)] = self.predict(g, j)
                    self.plan_end = None
        return admitted

    def start(self, now: int) -> list[tuple[int, int, bool]]:
        """(group, sample, is_probe) to put into free slots at step `now`; a probe parks after k tokens."""
        started = []
        if self.mode != "infinite":
            while self.rounds and len(self.rounds[0]) <= self.free:
                members = self.rounds.popleft()
                self.free -= len(members)
                for sample in members:
                    self.round_of[sample] = members
                    started.append((*sample, False))
            return started
        while self.free and self.probes:
            sample = self.probes.popleft()
            self.running[sample] = (now, float(self.probe_tokens), 0)
            self.probing.add(sample)
            self.free -= 1
            started.append((*sample, True))
        if not (self.free and self.parked):
            return started
        if self.kv_budget is None and len(self.parked) <= self.free:
            order = sorted(self.parked)
        else:
            order = self._refill_order(now)
        too_long = float("inf")  # the projected peak grows with the length started: skip what cannot fit either
        for sample in order:
            if not self.free:
                break
            length = self.parked[sample]
            if self.kv_budget is not None and self.running:
                if length >= too_long:
                    continue
                if self._projected_peak(now, length) > self.kv_budget:
                    too_long = length
                    continue
            self.running[sample] = (now, self.parked.pop(sample), self.probe_tokens)
            self.free -= 1
            started.append((*sample, False))
        return started

    def park(self, g: int, j: int, now: int) -> None:
        """A probe reached k tokens: it leaves its slot and waits with its predicted length."""
        del self.running[(g, j)]
        self.probing.discard((g, j))
        self.free += 1
        self.parked[(g, j)] = self.predict(g, j)
        self.plan_end = None

    def finish(self, g: int, j: int, now: int) -> None:
        """Sample (g, j) ended: its slot (full/micro: its round's slots, once all ended) is free again."""
        self.unfinished -= 1
        if self.mode == "infinite":
            del self.running[(g, j)]
            self.probing.discard((g, j))
            self.free += 1
            waiting = [s for s in self.parked if s[0] == g]
            for sample in waiting:  # a finished sibling tells the predictor about its prompt: re-predict
                self.parked[sample] = self.predict(*sample)
            if waiting:
                self.plan_end = None
            return
        members = self.round_of.pop((g, j))
        if not any(s in self.round_of for s in members):
            self.free += len(members)

    def _projected_peak(self, now: int, start_length: float | None = None) -> float:
        """Most response tokens held at once from now on if every running sample ends at its planned length (and
        a parked sample of predicted length `start_length` starts now): a sample holds its tokens so far plus one
        per step until it ends; probes (running, parked, pending) hold k tokens each."""
        k, margin = self.probe_tokens, self.kv_margin()
        held_left = [(held + now - start, max(0.0, margin * length - held - (now - start)))
                     for sample, (start, length, held) in self.running.items() if sample not in self.probing]
        probes = len(self.probing) + len(self.parked) + len(self.probes)
        if start_length is not None:  # it leaves the parked probes
            held_left.append((float(k), max(0.0, margin * start_length - k)))
            probes -= 1
        # the sum peaks just before a sample ends: then every sample still running holds (held + elapsed)
        peak = total = 0.0
        for count, (held, left) in enumerate(sorted(held_left, key=lambda x: -x[1]), start=1):
            total += held
            peak = max(peak, total + count * left)
        return peak + k * probes

    def _refill_order(self, now: int) -> list[Sample]:
        """Parked samples in the order the free slots take them: while some fit within the plan's makespan, the
        longest fitting one of the oldest group first (streaming: groups complete in order); then the shortest
        (SJF)."""
        if self.plan_end is None:  # re-plan: LPT of the parked samples over the slots' remaining loads
            loads = [max(1.0, length - held - (now - start)) for start, length, held in self.running.values()]
            loads += [0.0] * (self.slots - len(loads))
            self.plan_end = now + lpt_makespan((n - self.probe_tokens for n in self.parked.values()), loads)
        left = self.plan_end - now
        fitting = sorted((s for s, n in self.parked.items() if n - self.probe_tokens <= left),
                         key=lambda s: (s[0], -self.parked[s], s[1]))
        rest = sorted((s for s, n in self.parked.items() if n - self.probe_tokens > left),
                      key=lambda s: (self.parked[s], s))
        return fitting + rest


def simulate(scheduler: SlotScheduler, lengths: list[list[int]]) -> dict[str, float]:
    """Run `scheduler` on known response lengths [groups][samples] (tokens, >= 1); returns decode steps,
    slot utilisation, the step at which each group completed, peak running samples, peak open groups
    (prefilled, not yet complete: the prompt KV held) and peak response tokens held (running and parked).

    Mirrors the engine: a sample's first token comes from its group's prefill; each decode step adds
    one token to every running sample."""
    progress: dict[Sample, int] = {}
    probe_of: dict[Sample, bool] = {}
    left = [len(row) for row in lengths]
    completed_at = [0] * len(lengths)
    step = busy = peak = opened = peak_open = peak_kv = 0
    while not scheduler.done:
        changed = True
        while changed:  # samples that end on their first token free their slot before the step
            opened += len(scheduler.admit(step))
            peak_open = max(peak_open, opened - sum(n == 0 for n in left))
            changed = False
            for g, j, probe in scheduler.start(step):
                progress.setdefault((g, j), 1)
                probe_of[(g, j)] = probe
                if progress[(g, j)] >= lengths[g][j]:
                    scheduler.finish(g, j, step)
                    del probe_of[(g, j)]
                    left[g] -= 1
                    completed_at[g] = step
                    changed = True
        live = [s for s in probe_of if s in scheduler.running or s in scheduler.round_of]
        if not live:
            continue
        step += 1
        busy += len(live)
        peak = max(peak, len(live))
        kv = sum(progress[s] for s in live) + sum(progress[s] for s in scheduler.parked if s in progress)
        peak_kv = max(peak_kv, kv)
        for g, j in live:
            progress[(g, j)] += 1
            if progress[(g, j)] >= lengths[g][j]:
                scheduler.finish(g, j, step)
                del probe_of[(g, j)]
                left[g] -= 1
                completed_at[g] = step
            elif probe_of[(g, j)] and progress[(g, j)] >= scheduler.probe_tokens:
                scheduler.park(g, j, step)
                del probe_of[(g, j)]
    return {"decode_steps": step, "utilisation": busy / max(1, step * scheduler.slots),
            "group_completed_at": completed_at, "peak_running": peak, "peak_open_groups": peak_open,
            "peak_kv_tokens": peak_kv}
