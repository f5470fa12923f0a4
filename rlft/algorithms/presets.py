"""`--algo` presets: each a named bundle of `algo.*` options, every one still overridable.

Only algorithm options live here; task hyperparameters (lr, batch, steps) are the config defaults.
"""

from __future__ import annotations

from rlft.registry import Registry

ALGO_PRESETS: Registry = Registry("algorithm")


def register_algo(name: str, **algo_options) -> None:
    """Register preset `name` that sets these `algo.*` options."""
    ALGO_PRESETS.register(name)({"algo": algo_options})


register_algo("grpo", advantage="grpo", aggregation="seq-mean-token-mean")
# DAPO's recipe: token-level loss, clip-higher, dynamic sampling (filter_groups), soft overlong punishment
register_algo(
    "grpo-token", advantage="grpo", aggregation="token-mean", clip_eps_high=0.28,
    filter_groups=True, overlong="penalty",
)
register_algo("dr-grpo", advantage="dr-grpo", aggregation="seq-mean-token-sum-norm")
register_algo("grpo-ba", advantage="grpo", aggregation="balanced")
register_algo("rloo", advantage="rloo", aggregation="seq-mean-token-mean")
register_algo("reinforce++", advantage="reinforce++", aggregation="token-mean")
