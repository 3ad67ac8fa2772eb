"""The study (issue 13) as a benchmark script: ``python benchmarks/study.py --preset full
--results benchmarks/results`` writes study.csv, study.md and the curve plots there (see nemo_subnet/study)."""

import sys

from nemo_subnet.study.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
