"""Learning-rate schedules as a multiplier on each param group's own base lr.

A torch ``LambdaLR`` over the client optimizer scales every group's ``initial_lr``
by the same factor, so muP's per-group learning rates survive (DeepSpeed's
WarmupLR would overwrite them all with one value). We step it ourselves once per
optimizer step (not through ``accelerator.prepare``, which would step it once per
process).
"""

from __future__ import annotations

import functools
import math

import torch


def lr_factor(step: int, *, total: int, warmup: int, kind: str, decay_frac: float = 0.2,
              min_ratio: float = 0.1) -> float:
    """Multiplier at optimizer step ``step`` (0-based) of a ``total``-step run.

    1. linear warmup from 1/warmup to 1 over ``warmup`` steps;
    2. then ``constant``: 1; ``cosine``: half-cosine from 1 to ``min_ratio`` at the end;
       ``wsd``: hold 1, then decay linearly to ``min_ratio`` over the last ``decay_frac`` of the run.
    """
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "wsd":
        decay_start = total - int(decay_frac * total)
        if step < decay_start:
            return 1.0
        progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
        return 1.0 - (1 - min_ratio) * progress
    raise ValueError(f"train.schedule '{kind}' is unknown; use cosine, wsd or constant")


def build_scheduler(optimizer: torch.optim.Optimizer, train_cfg, total_steps: int):
    """LambdaLR on the client optimizer; each group keeps its own base lr."""
    def factor(step: int) -> float:
        return lr_factor(step, total=total_steps, warmup=train_cfg.warmup_steps, kind=train_cfg.schedule,
                         decay_frac=train_cfg.decay_frac, min_ratio=train_cfg.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def describe_change(train_cfg, old_total: int, new_total: int, step: int) -> str:
    """One phrase for a resumed run whose length changed (train.steps / train.tokens): what the
    schedule does from ``step`` on. The warmup is never repeated (the scheduler's step count is
    restored); the schedule is evaluated at the new length."""
    kind = train_cfg.schedule
    head = f"run length {old_total} -> {new_total} steps"
    if kind == "constant":
        return f"{head} (constant lr: nothing to re-place)"
    factor = functools.partial(lr_factor, warmup=train_cfg.warmup_steps, kind=kind,
                               decay_frac=train_cfg.decay_frac, min_ratio=train_cfg.min_lr_ratio)
    was, now = factor(step, total=old_total), factor(step, total=new_total)
    if kind == "wsd":
        start = new_total - int(train_cfg.decay_frac * new_total)
        return (f"{head}: WSD continues the stable phase to step {start} and decays over steps {start}-{new_total} "
                f"(lr factor at step {step}: {was:.3g} -> {now:.3g})")
    return f"{head}: cosine re-stretched to end at step {new_total} (lr factor at step {step}: {was:.3g} -> {now:.3g})"
