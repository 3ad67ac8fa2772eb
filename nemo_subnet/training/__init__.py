"""Pretraining and distillation of a student on megatron-core (see docs/training.md).

``train(TrainConfig) -> TrainResult`` is the Python entry point; ``nemo-subnet train`` the CLI;
``tokens_to_target`` compares runs by the tokens they need to reach a validation perplexity.
"""

from nemo_subnet.training.config import (CheckpointConfig, DataConfig, DistillConfig, InitConfig, LoggingConfig,
                                         OptimizerConfig, ParallelConfig, ScheduleConfig, TrainConfig)

__all__ = [
    "CheckpointConfig", "DataConfig", "DistillConfig", "InitConfig", "LoggingConfig", "OptimizerConfig",
    "ParallelConfig", "ScheduleConfig", "TrainConfig", "TrainResult", "TrainingError", "train",
]


def __getattr__(name):
    # the loop imports megatron and the runtime: load it only when asked for
    if name in ("train", "TrainResult", "TrainingError"):
        from nemo_subnet.training import loop

        return getattr(loop, name)
    raise AttributeError(name)
