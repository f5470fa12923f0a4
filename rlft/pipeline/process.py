"""What every actor process does for itself: its torch threads (and the cores the learner lends while it
idles) and its peak memory."""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import resource
import tempfile

import torch


def torch_threads(cfg) -> int:
    """`ray.torch_threads`; unset: every core, or half of them in async mode, where the rollout and the
    learner compute at the same time (two actors each spinning threads on every core slow both down)."""
    cores = os.cpu_count() or 1
    return cfg.ray.torch_threads or (max(1, cores // 2) if cfg.train.mode == "async" else cores)


def set_torch_threads(cfg) -> None:
    """This actor's torch threads (see `torch_threads`)."""
    torch.set_num_threads(torch_threads(cfg))


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class LearnerBusy:
    """A one-byte flag in a file the learner and a rollout worker on the same machine both map: set while the
    learner computes. Async mode on a CPU gives each of them half the cores; a rollout worker reads the flag
    before each engine step and, while the learner idles (its step done before the next batch is drawn), uses
    the learner's cores too (`ray.lend_idle_cores`). Two actors each spinning threads on every core slow both
    down several times over, so the borrow ends within one engine step of the learner starting again."""

    def __init__(self, path: str):
        self._file = open(path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), 1)

    @staticmethod
    def create() -> str:
        """A new flag file (cleared), removed when this process exits; its path is what the actors open."""
        fd, path = tempfile.mkstemp(prefix="rlft-learner-busy-")
        os.write(fd, b"\0")
        os.close(fd)
        atexit.register(lambda: os.path.exists(path) and os.unlink(path))
        return path

    @staticmethod
    def open(path: str | None) -> "LearnerBusy | None":
        """The flag at `path`; None without one, or where the file is not on this machine (an actor on another
        node of a Ray cluster shares no cores with the learner)."""
        return LearnerBusy(path) if path and os.path.exists(path) else None

    def is_set(self) -> bool:
        return self._map[0] == 1

    @contextlib.contextmanager
    def held(self):
        """Set for the length of the block (cleared however it ends)."""
        self._map[0] = 1
        try:
            yield
        finally:
            self._map[0] = 0


def lends_idle_cores(cfg, on_gpu: bool) -> bool:
    """Whether the learner lends its cores to the rollout worker while it idles: async mode with automatic
    thread counts on a CPU, one built-in-engine rollout worker and the single-process learner (otherwise the
    cores are not the learner's alone to lend, or the engine manages its own threads)."""
    return (cfg.ray.lend_idle_cores and cfg.train.mode == "async" and cfg.ray.torch_threads is None and not on_gpu
            and cfg.rollout.num_workers == 1 and cfg.rollout.engine == "builtin" and cfg.learner.backend == "torch")
