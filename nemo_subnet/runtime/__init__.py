"""Process-level runtime: distributed init (torchrun / SLURM / single) and the CPU backend."""

from nemo_subnet.runtime.cpu_backend import compute_device, seeded_generator
from nemo_subnet.runtime.distributed import Runtime, init_runtime, runtime_scope, shutdown_runtime

__all__ = ["Runtime", "compute_device", "init_runtime", "runtime_scope", "seeded_generator",
           "shutdown_runtime"]
