"""HF <-> Megatron conversion: family adapters, safetensors I/O, TP/PP sharding, import and export."""
