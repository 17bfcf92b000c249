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


def build_optimizer(model, cfg) -> torch.optim.Optimizer:
    """The run's optimizer from ``cfg.optim`` (and ``cfg.mup`` for the per-group lr)."""
    groups = build_param_groups(model, cfg)
    if cfg.optim.name == "muon":
        return ShardedMuon(groups)
    if cfg.optim.name == "adamw":
        return torch.optim.AdamW(groups, foreach=False)
    raise ValueError(f"optim.name must be 'muon' or 'adamw', got {cfg.optim.name!r}")
