"""Stage pipeline shared by ``make demo`` and the NeMo-Run recipes: stages with reuse of finished outputs."""
