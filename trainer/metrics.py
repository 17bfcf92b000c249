"""Throughput and model-FLOPs utilisation (MFU) estimates."""

from __future__ import annotations

import os

import torch

# Dense peak TFLOP/s per device for the training dtype (vendor datasheets, no sparsity).
_GPU_PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
# Measured here (DESIGN.md): one core, fp32 GEMM ~94 GFLOP/s on this CPU.
_CPU_PEAK_FP32_PER_CORE = 0.094


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) plus attention's
    score and value products, 12 * n_layers * d_model * seq_len (PaLM appendix B)."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def peak_flops_per_device(override_tflops: float | None = None) -> float:
    """Peak FLOP/s of one device: the override, a known GPU, or this CPU's cores at fp32."""
    if override_tflops:
        return override_tflops * 1e12
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        for key, tflops in _GPU_PEAK_BF16.items():
            if key in name:
                return tflops * 1e12
        return 100e12
    cores = max(1, torch.get_num_threads()) if os.environ.get("OMP_NUM_THREADS") else (os.cpu_count() or 1)
    return cores * _CPU_PEAK_FP32_PER_CORE * 1e12


def mfu(tokens_per_s: float, flops_token: float, n_devices: int, peak_per_device: float) -> float:
    return tokens_per_s * flops_token / (n_devices * peak_per_device)
