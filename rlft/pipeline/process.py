"""What every actor process does for itself: its torch threads and its peak memory."""

from __future__ import annotations

import os
import resource

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
