"""Optimizers by name (`optim.name`): torch AdamW and the memory-efficient ones.

Adding one touches one file: a builder `(params, cfg: OptimConfig) -> torch.optim.Optimizer`
decorated with `@OPTIMIZERS.register("name", needs={...})`, in a module imported below. `needs`
are words of rlft.registry.NEEDS (e.g. "whole_matrices": refused under DeepSpeed ZeRO, which hands
the optimizer flat slices); config.py reads them, so no cross-check names an optimizer. The
optimizer's own hyperparameters go in OptimConfig (rlft/config.py), prefixed with its name.
"""

from rlft.optim import adamw4bit, flora, zo  # noqa: F401  (register 'adamw-4bit', 'adamw-4bit-factor', 'flora', 'zo')
from rlft.optim.base import scale_moments, state_bytes
from rlft.optim.registry import OPTIMIZERS, build_optimizer, needs_backward

__all__ = ["OPTIMIZERS", "build_optimizer", "needs_backward", "scale_moments", "state_bytes"]
