"""search-then-pretrain NeMo-Run entrypoint (being written)."""
