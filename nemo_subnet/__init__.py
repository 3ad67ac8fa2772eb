"""nemo-subnet: find, extract and distill the best sub-network of a large LM on Megatron-core."""

import warnings as _warnings

__version__ = "0.1.0"

# megatron-core announces at import, on every machine without Transformer Engine or Apex (every CPU machine),
# that it falls back to its own implementations: about a dozen UserWarnings before each command's output. The
# fallbacks are what we run on CPU, so the notices say nothing; only these are filtered (other warnings stay). Set
# here because megatron is imported by whichever of our modules is loaded first, before any runtime exists.
for _message in ("Transformer Engine and Apex are not installed", "Apex is not installed"):
    _warnings.filterwarnings("ignore", message=_message, category=UserWarning)
