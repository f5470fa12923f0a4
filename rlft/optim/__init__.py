"""Optimizers by name (`optim.name`): torch AdamW and the memory-efficient ones."""

from rlft.optim.registry import OPTIMIZERS, build_optimizer

__all__ = ["OPTIMIZERS", "build_optimizer"]
