"""NeMo-Run recipes: search-then-pretrain as one experiment (installed as ``nemo_subnet.recipes``)."""
