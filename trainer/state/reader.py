"""The checkpoint reader: full fp32 tensors by parameter name from a checkpoint directory, in one
process, with no launcher, DeepSpeed engine or GPU. Export and the tests read checkpoints through it.

    >>> master = read_named_tensors("runs/tiny/checkpoints/step_000100")          # the weights
    >>> ema = read_ema("runs/tiny/checkpoints/step_000100")                       # None without an EMA
    >>> momentum = read_named_tensors(ckpt_dir, "optim.momentum_buffer")          # Muon params only

The pieces are every rank's ``state/rank{r}.pt`` (``reshard.py``), put together by their recorded
parameter ranges, whatever the world size or ZeRO stage that wrote them; tied parameters appear once,
under the first name ``model.named_parameters()`` gives.
"""

from __future__ import annotations

import os

import torch

from trainer.config.base import ConfigError
from trainer.state import reshard
from trainer.state.checkpoint import buffers_file, shard_files


def open_shards(ckpt_dir: str) -> list[dict]:
    """Every rank's shard of checkpoint ``ckpt_dir``, memory-mapped; ConfigError when it has none."""
    files = shard_files(ckpt_dir)
    if not files:
        old = os.path.isdir(os.path.join(ckpt_dir, "accelerate"))
        raise ConfigError(f"'{ckpt_dir}' has no state/rank*.pt; " + (
            "it was written before the layout-free format (read it with the scaleout version that wrote it)"
            if old else "it is not a scaleout checkpoint"))
    return reshard.open_shards(files)


def read_named_tensors(ckpt_dir: str, kind: str = "master", *, whole: bool = False,
                       shards: list[dict] | None = None) -> dict[str, torch.Tensor]:
    """Full tensors of ``kind`` by parameter name: ``master`` (the weights), ``ema``, or an optimizer
    state (``optim.exp_avg``, ``optim.exp_avg_sq``, ``optim.momentum_buffer``); a parameter ``kind``
    does not cover whole is left out, or with ``whole`` is a ConfigError (a rank's file is missing)."""
    shards = shards if shards is not None else open_shards(ckpt_dir)
    out = reshard.full_tensors(shards, kind)
    missing = sorted(set(shards[0]["shapes"]) - set(out))
    if whole and missing:
        raise ConfigError(f"the {kind} tensors in '{ckpt_dir}' do not cover {missing[0]}; a rank's state file "
                          "is missing")
    return out


def read_ema(ckpt_dir: str) -> dict[str, torch.Tensor] | None:
    """The full fp32 EMA by parameter name; None when the run kept no EMA or it had not started yet
    (``ema.start_step``)."""
    shards = open_shards(ckpt_dir)
    meta = shards[0].get("ema")
    if meta is None or not meta["initialized"]:
        return None
    return read_named_tensors(ckpt_dir, "ema", whole=True, shards=shards)


def read_buffers(ckpt_dir: str) -> dict[str, torch.Tensor]:
    """The model buffers training changed (deepseek_v3's expert biases), by name; {} when none."""
    path = buffers_file(ckpt_dir)
    return torch.load(path, weights_only=True) if os.path.exists(path) else {}
