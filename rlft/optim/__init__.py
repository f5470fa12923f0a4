"""Optimizers by name (`optim.name`): torch AdamW and the memory-efficient ones."""

from rlft.optim import adamw4bit, flora  # noqa: F401  (register 'adamw-4bit', 'adamw-4bit-factor', 'flora')
from rlft.optim.base import scale_moments, state_bytes
from rlft.optim.registry import OPTIMIZERS, build_optimizer

__all__ = ["OPTIMIZERS", "build_optimizer", "scale_moments", "state_bytes"]
