"""Learner algorithms: advantage estimators, aggregation modes, policy losses, presets."""

from rlft.algorithms.advantages import ADVANTAGES
from rlft.algorithms.aggregation import AGGREGATIONS
from rlft.algorithms.policy_loss import POLICY_LOSSES
from rlft.algorithms.presets import ALGO_PRESETS, register_algo

__all__ = ["ADVANTAGES", "AGGREGATIONS", "ALGO_PRESETS", "POLICY_LOSSES", "register_algo"]
