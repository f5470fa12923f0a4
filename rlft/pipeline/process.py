"""What every actor process does for itself: its torch threads (and the cores it borrows while another
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


# bf16 GEMMs on a CPU go through oneDNN, behind two per-shape caches, each keeping up to 1024 entries by default:
# oneDNN's compiled kernels and ideep's computations (a kernel with its descriptors and buffers; PyTorch's
# `LRU_CACHE_CAPACITY`). The learner's packed batch changes shape every step, so a bf16 learner's resident memory
# grew with each new shape: over 100 steps of varying shapes (one thread, the embedded default's batches) it
# reached 872-878 MiB, and 569-578 MiB with both bounded at 64, at the same step time (0.106-0.120 s either way),
# against a flat ~520 MiB for one repeated shape. 64 holds what one step reuses (its layers share shapes). Both
# are read when oneDNN first runs; a user's setting wins.
ONEDNN_CACHES = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "64"}


def set_torch_threads(cfg) -> None:
    """This actor's torch threads (see `torch_threads`), and oneDNN's per-shape caches bounded (ONEDNN_CACHES)."""
    for name, value in ONEDNN_CACHES.items():
        os.environ.setdefault(name, value)
    torch.set_num_threads(torch_threads(cfg))


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CoreShare:
    """Async mode on a CPU gives the learner and the rollout worker half the cores each; while one of them
    idles, the other uses its cores too (`ray.lend_idle_cores`). A file both map (same machine: `create` makes
    it, `open` finds it) holds one byte per side, set while that side has work: the learner sets its own for
    each step; the driver sets the rollout side's from a draw's submission to its end (set before the
    learner's next step starts, so a learner pass never borrows cores a starting draw is about to take).
    Before each unit of work (an engine step, a learner micro-batch pass) each side reads the other's byte and
    sets its torch threads. Two actors each spinning threads on every core slow both down several times over,
    so a borrow ends with the unit it was taken for: one engine step (tens of ms), one decoder layer's forward or
    backward in a learner pass (`recheck_per_layer`: the rollout's draw mostly ends inside the learner's pass,
    whose rest then runs on every core)."""

    LEARNER, ROLLOUT = 0, 1

    def __init__(self, path: str, role: int, own_threads: int):
        self._file = open(path, "r+b")
        self._map = mmap.mmap(self._file.fileno(), 2)
        self.role, self.own_threads = role, own_threads
        self.borrowed = 0  # units of work run on the other's cores too

    @staticmethod
    def create() -> str:
        """A new file (both bytes clear), removed when this process exits; its path is what the actors open."""
        fd, path = tempfile.mkstemp(prefix="rlft-core-share-")
        os.write(fd, b"\0\0")
        os.close(fd)
        atexit.register(lambda: os.path.exists(path) and os.unlink(path))
        return path

    @staticmethod
    def open(path: str | None, role: int, own_threads: int) -> "CoreShare | None":
        """The share at `path`; None without one, or where the file is not on this machine (an actor on another
        node of a Ray cluster shares no cores with this one)."""
        return CoreShare(path, role, own_threads) if path and os.path.exists(path) else None

    def other_busy(self) -> bool:
        return self._map[1 - self.role] == 1

    def pick_threads(self) -> None:
        """Before a unit of work: every core while the other idles, this actor's share while it computes."""
        self.borrowed += self._set_threads()

    def _set_threads(self) -> bool:
        """Every core while the other idles, this actor's share while it computes; whether it borrows."""
        threads = self.own_threads if self.other_busy() else os.cpu_count() or 1
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        return threads > self.own_threads

    def recheck_per_layer(self, model: torch.nn.Module) -> None:
        """Pick the threads again before each decoder layer's forward and backward inside a learner pass (the
        pass itself starts with `pick_threads`); `borrowed_layers` counts those run on the other's cores too.

        The layers are the model's longest ModuleList (a transformer's blocks). Backward: a hook on each block's
        output runs as its gradient arrives, on the thread running the backward (a CPU backward runs on the
        thread that called it, so the thread count set there applies to the block's gradient kernels)."""
        blocks = max((m for m in model.modules() if isinstance(m, torch.nn.ModuleList)), key=len, default=[])
        self.borrowed_layers = 0

        def recheck(*_):
            self.borrowed_layers += self._set_threads()

        def on_output(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if isinstance(hidden, torch.Tensor) and hidden.requires_grad:
                hidden.register_hook(recheck)  # returns None: the gradient passes unchanged

        for block in blocks:
            block.register_forward_pre_hook(recheck)
            block.register_forward_hook(on_output)

    def mark(self, busy: bool) -> None:
        """This side has work (True) or none (False)."""
        self._map[self.role] = int(busy)

    @contextlib.contextmanager
    def busy(self):
        """This side has work for the length of the block (cleared however it ends)."""
        self.mark(True)
        try:
            yield
        finally:
            self.mark(False)


def lends_idle_cores(cfg) -> bool:
    """Whether the learner and the rollout worker lend each other their cores while they idle (CoreShare):
    async mode with automatic thread counts on a CPU, one built-in-engine rollout worker and the single-process
    learner (otherwise the cores are not theirs alone to lend, or the engine manages its own threads)."""
    from rlft.models.loading import pick_device

    on_gpu = "cuda" in (pick_device(cfg.rollout.device).type, pick_device(cfg.learner.device).type)
    return (cfg.ray.lend_idle_cores and cfg.train.mode == "async" and cfg.ray.torch_threads is None and not on_gpu
            and cfg.rollout.num_workers == 1 and cfg.rollout.engine == "builtin" and cfg.learner.backend == "torch")
