"""torchrun worker: masked_worker.py with the super-network in its static-graph mode (no compilation:
the TP shards of the mask buffers and the depth gate on each pipeline stage are what this checks)."""

import functools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import masked_worker  # noqa: E402

from nemo_subnet.subnet.supernet import build_supernet  # noqa: E402

if __name__ == "__main__":
    masked_worker.build_supernet = functools.partial(build_supernet, static_graph=True)
    sys.exit(masked_worker.main())
