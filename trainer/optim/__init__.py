"""Optimizers: ``build_optimizer(model, cfg)`` is the one entry point the training loop uses.

``optim.name == "muon"``: ``ShardedMuon`` (Muon on hidden matrices, AdamW on embeddings, readout
and vectors, one optimizer). ``"adamw"``: ``torch.optim.AdamW`` over the same muP groups. Under
DeepSpeed ZeRO-1/2 nothing else is needed after ``accelerator.prepare``: ShardedMuon learns the
flat-partition layout on its first ``step()``.
"""

from __future__ import annotations

import torch

from trainer.optim.groups import build_param_groups
from trainer.optim.muon import ShardedMuon, adam_update, muon_scale, muon_update
from trainer.optim.newton_schulz import zeropower_via_newtonschulz5

__all__ = ["build_optimizer", "build_param_groups", "ShardedMuon", "zeropower_via_newtonschulz5",
           "muon_update", "adam_update", "muon_scale"]


def build_optimizer(model, cfg, cuda: bool | None = None) -> torch.optim.Optimizer:
    """The run's optimizer from ``cfg.optim`` (and ``cfg.mup`` for the per-group lr).

    ``cuda``: whether the params will live on a GPU when the optimizer steps (default: CUDA is
    available; the model is still on CPU here, ``accelerator.prepare`` moves it). There torch's AdamW
    is ``fused`` (one kernel for all params); on CPU it keeps the single-tensor path the parity tests
    were written against."""
    groups = build_param_groups(model, cfg)
    if cfg.optim.name == "muon":
        return ShardedMuon(groups)
    if cfg.optim.name == "adamw":
        on_gpu = torch.cuda.is_available() if cuda is None else cuda
        return torch.optim.AdamW(groups, fused=True) if on_gpu else torch.optim.AdamW(groups, foreach=False)
    raise ValueError(f"optim.name must be 'muon' or 'adamw', got {cfg.optim.name!r}")
