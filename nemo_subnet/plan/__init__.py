"""Planning a distillation run before launching it: per-GPU memory (memory.py), step time (throughput.py),
the best layout on a cluster (search.py), GPUs (hardware.py) and model descriptions (models.py)."""

from nemo_subnet.plan.memory import MemoryPlan, PlanOptions, plan_memory
from nemo_subnet.plan.throughput import StepTime, step_time

__all__ = ["MemoryPlan", "PlanOptions", "StepTime", "plan_memory", "step_time"]
