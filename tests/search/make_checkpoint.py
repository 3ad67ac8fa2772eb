"""Write a randomly initialized model checkpoint: ``python make_checkpoint.py MODEL_YAML OUT SEED``.

A subprocess: dist_checkpointing's writer must run under a ``__main__`` guard.
"""

import sys
from pathlib import Path


def main() -> int:
    from nemo_subnet.checkpointing import atomic_directory, save_model
    from nemo_subnet.models import ModelConfig, build_gpt_model
    from nemo_subnet.runtime import init_runtime, shutdown_runtime

    model_yaml, out, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    init_runtime(tp=1, pp=1, seed=seed)
    cfg = ModelConfig.load(model_yaml)
    model = build_gpt_model(cfg)
    with atomic_directory(out) as tmp:
        save_model(model, cfg, tmp)
    shutdown_runtime()
    return 0


if __name__ == "__main__":
    sys.exit(main())
