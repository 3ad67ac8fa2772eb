"""Helpers of `benchmarks/gpu_acceptance.py`: one module per section, plus the runner, the report and the
sizes (profiles). Nothing in the library imports this package."""
