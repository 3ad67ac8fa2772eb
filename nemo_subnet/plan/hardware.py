"""GPUs the planner knows: dense peak FLOP/s, usable HBM, interconnect bandwidths, and the MFU it assumes.

Numbers are the vendors' published dense (no sparsity) figures for the SXM parts; HBM is what the device
reports to CUDA (``torch.cuda.mem_get_info`` total), not the marketing capacity. The MFU default is the
planner's assumption, stated in every plan: the fraction of peak the matmul-heavy step sustains, with
tensor-parallel communication and kernel inefficiency folded in (Megatron-LM reports 40-47% on H100 for
dense GPT training at scale; 0.40 is the planner's default). Pipeline bubbles and data-parallel
communication are modelled separately (throughput.py), not folded into it.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30


@dataclass(frozen=True)
class GPU:
    name: str
    peak_bf16_flops: float
    """Dense bf16 tensor-core FLOP/s."""
    peak_fp32_flops: float
    """Dense fp32 (non-tensor-core) FLOP/s: fp32 matmuls without TF32, as torch runs them by default."""
    hbm_bytes: int
    """Memory the device reports as total."""
    nvlink_bytes_per_s: float
    """Per-GPU, per-direction NVLink bandwidth inside a node."""
    network_bytes_per_s: float
    """Per-GPU inter-node bandwidth (one 400 Gb/s NIC per GPU)."""
    default_mfu: float = 0.40

    def peak_flops(self, precision: str) -> float:
        return self.peak_bf16_flops if precision == "bf16" else self.peak_fp32_flops


GPUS: dict[str, GPU] = {
    # H100 SXM5 80 GB: 989 TFLOP/s bf16 dense, 67 TFLOP/s fp32; NVLink 4: 900 GB/s bidirectional
    "H100": GPU("H100", 989e12, 67e12, 81559 * 2**20, 450e9, 50e9),
    # H200 SXM 141 GB: the H100's compute, HBM3e
    "H200": GPU("H200", 989e12, 67e12, 143771 * 2**20, 450e9, 50e9),
    # B200 (DGX B200, 180 GB per GPU): 2.25 PFLOP/s bf16 dense, 80 TFLOP/s fp32; NVLink 5: 1.8 TB/s bidirectional
    "B200": GPU("B200", 2.25e15, 80e12, 183359 * 2**20, 900e9, 50e9),
}


def gpu(name: str) -> GPU:
    key = name.upper()
    if key not in GPUS:
        raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
    return GPUS[key]
