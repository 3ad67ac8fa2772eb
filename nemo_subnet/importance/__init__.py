"""Activation importance of a super-network's units (Minitron-style), saved and reusable; importance-ordered selection.

``compute_importance(model, cfg, data) -> ImportanceScores`` (collect.py), ``ImportanceScores.save/load``
and ``importance_ordered(cfg, sizes, scores) -> SubnetConfig`` (scores.py); ``nemo-subnet importance`` (cli.py).
"""

from nemo_subnet.importance.scores import Aggregation, ImportanceScores, LayerMetric, importance_ordered

__all__ = ["Aggregation", "ImportanceConfig", "ImportanceScores", "LayerMetric", "compute_importance", "importance_ordered"]


def __getattr__(name):
    # collect.py imports megatron: load it only when asked for
    if name in ("compute_importance", "ImportanceConfig"):
        from nemo_subnet.importance import collect

        return getattr(collect, name)
    raise AttributeError(name)
