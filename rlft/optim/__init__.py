"""Optimizers by name (`optim.name`): torch AdamW and the memory-efficient ones."""

from rlft.optim import adamw4bit, flora, zo  # noqa: F401  (register 'adamw-4bit', 'adamw-4bit-factor', 'flora', 'zo')
from rlft.optim.base import scale_moments, state_bytes
from rlft.optim.registry import OPTIMIZERS, build_optimizer, needs_backward

__all__ = ["OPTIMIZERS", "build_optimizer", "needs_backward", "scale_moments", "state_bytes"]
