"""Process-level runtime: distributed init (torchrun / SLURM / single) and the CPU backend."""

from nemo_subnet.runtime.distributed import Runtime, init_runtime, runtime_scope, shutdown_runtime

__all__ = ["Runtime", "init_runtime", "runtime_scope", "shutdown_runtime"]
