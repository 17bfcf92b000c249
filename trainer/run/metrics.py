"""Throughput and model-FLOPs utilisation (MFU) estimates."""

from __future__ import annotations

import os
import resource
import sys

import torch

# Dense peak TFLOP/s per device for the training dtype (vendor datasheets, no sparsity).
_GPU_PEAK_BF16 = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}
# Measured here (docs/design.md, "CPU rates"): one core, fp32 GEMM ~94 GFLOP/s on this CPU.
_CPU_PEAK_FP32_PER_CORE = 0.094


def matmul_params(model: torch.nn.Module) -> int:
    """Weights a token takes through a matmul: every matrix, except an untied input embedding (a
    lookup, no FLOPs); of a MoE expert stack only the k of E experts a token is routed to (active
    parameters). A tied embedding counts once, as the readout. Vectors (norm gains) are left out."""
    from models.moe import moe_blocks

    embedding = model.get_input_embeddings().weight
    tied = embedding is model.get_output_embeddings().weight
    unique = {id(p): p for p in model.parameters()}.values()
    experts = sum(p.numel() * b.top_k // b.n_experts for b in moe_blocks(model) for p in b.experts.parameters())
    return sum(p.numel() for p in unique if p.dim() == 2 and (tied or p is not embedding)) + experts


def flops_per_token(n_params: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward; N from ``matmul_params``)
    plus attention's score and value products, 12 * n_layers * d_model * seq_len (PaLM appendix B,
    no causal discount)."""
    return 6.0 * n_params + 12.0 * n_layers * d_model * seq_len


def peak_memory_gb() -> float:
    """Peak memory of this process in GB: CUDA's max allocated, or on CPU the peak resident set.
    On Linux that is the kernel's VmHWM, which starts afresh at exec; ``ru_maxrss`` carries the
    forking parent's peak over an exec (a worker started by a 1 GB launcher would report 1 GB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 1e9
    try:
        with open("/proc/self/status") as status:
            return next(int(ln.split()[1]) * 1024 / 1e9 for ln in status if ln.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss * (1 if sys.platform == "darwin" else 1024) / 1e9


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
