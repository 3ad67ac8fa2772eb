"""The method's claims measured at our scale: ``python -m nemo_subnet.study --preset full`` (benchmarks/study.py).

config.py says which rows and presets; run.py runs them with the pipeline's own functions (resumable per row);
report.py turns row results into the table, CSV and plots. docs/study.md has the definitions.
"""
