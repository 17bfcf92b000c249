"""Build the Accelerator: DeepSpeed plugin from a JSON file, gloo when there is no CUDA.

On a CPU-only machine accelerate picks no process-group backend, so every process
believes it is rank 0 of 1 while DeepSpeed still shards (docs/design.md). Passing
``InitProcessGroupKwargs(backend="gloo")`` gives true ranks and real ZeRO partitions.
"""

from __future__ import annotations

import json
import os

import torch
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, TorchDynamoPlugin


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resolve_precision(precision: str) -> str:
    """'auto' -> bf16 on a GPU with bf16, fp16 on an older GPU (V100, T4), fp32 on CPU."""
    if precision == "auto":
        if not torch.cuda.is_available():
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def deepspeed_config(path: str, *, micro_batch_size: int, grad_accum: int, world_size: int,
                     grad_clip: float, precision: str) -> dict:
    """Load a ds_configs/*.json and fill its "auto" fields from the run config.

    accelerate's own "auto" filling needs a prepared DataLoader; our loader changes the
    micro-batch size with the curriculum, so we fill the values here (DeepSpeed uses the
    micro-batch size only for its bookkeeping under ZeRO-1/2). What else the file may hold was
    checked when the config loaded (``trainer/config/deepspeed.py``: these keys are its ``FILLED``)."""
    with open(path) as f:
        cfg = json.load(f)
    cfg["train_micro_batch_size_per_gpu"] = micro_batch_size
    cfg["gradient_accumulation_steps"] = grad_accum
    cfg["train_batch_size"] = micro_batch_size * grad_accum * world_size
    cfg["gradient_clipping"] = grad_clip
    cfg["bf16"] = {"enabled": precision == "bf16"}
    cfg.pop("fp16", None)
    if precision == "fp16":  # DeepSpeed's dynamic loss scaler: unscales (and clips) before our step
        cfg["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                       "hysteresis": 2, "min_loss_scale": 1}
    cfg["zero_allow_untested_optimizer"] = True  # the optimizer is always ours; DeepSpeed's default refuses it
    return cfg


def build_accelerator(ds_config: dict | None, *, grad_accum: int, precision: str = "fp32",
                      log_with: list[str] | None = None, project_dir: str | None = None) -> Accelerator:
    """One Accelerator for the run. ``ds_config`` None means DDP / single process.

    accelerate's own compilation stays off, whatever a launcher config says (``train.compile`` decides,
    applied in place by ``trainer.run.build.compile_model``): without DeepSpeed it would wrap the model in
    ``torch.compile``'s module, whose ``_orig_mod.`` names leak into checkpoints and the export."""
    if ds_config is not None and "RANK" not in os.environ:
        # DeepSpeed needs a process group even for one process; with no launcher's variables it would
        # fall back to MPI discovery. A lone process is rank 0 of 1 on a free local port.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))
    launched = "RANK" in os.environ  # without a launcher and without DeepSpeed: no process group at all
    handlers = [InitProcessGroupKwargs(backend="gloo")] if launched and not torch.cuda.is_available() else []
    kwargs = dict(kwargs_handlers=handlers, log_with=log_with or None, dynamo_plugin=TorchDynamoPlugin(backend="no"),
                  project_config=ProjectConfiguration(project_dir=project_dir) if project_dir else None)
    # A launcher config with distributed_type DEEPSPEED exports ACCELERATE_USE_DEEPSPEED; the recipe's
    # dist.deepspeed_config decides, so a null there must not let accelerate build a plugin from env.
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true" if ds_config is not None else "false"
    if ds_config is not None:
        # DeepSpeed owns accumulation and mixed precision; accelerate must not also apply them.
        return Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config), **kwargs)
    # Without cpu=True accelerate leaves a CPU multi-process run as DistributedType.NO: no DDP wrapping,
    # no gradient all-reduce, no-op barriers.
    return Accelerator(gradient_accumulation_steps=grad_accum, cpu=not torch.cuda.is_available(),
                       mixed_precision="bf16" if precision == "bf16" else "no", **kwargs)
