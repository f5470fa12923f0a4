"""What every actor process does for itself: its torch threads and its peak memory."""

from __future__ import annotations

import os
import resource

import torch


def set_torch_threads(cfg) -> None:
    """`ray.torch_threads`, or every core when unset (0)."""
    torch.set_num_threads(cfg.ray.torch_threads or os.cpu_count() or 1)


def peak_rss_bytes() -> int:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
