"""One optimizer step and one evaluation: what the loop calls every step and every ``train.eval_every``."""

from __future__ import annotations

import math

import torch
from accelerate.utils import DistributedType


def train_step(accelerator, model, optimizer, scheduler, micro_batches, grad_clip: float) -> dict:
    """One optimizer step over ``micro_batches``: the mean loss, the grad norm before clipping,
    and whether the step was skipped. A non-finite loss or gradient norm skips the step: no
    optimizer or scheduler update (under DeepSpeed its overflow check skips the engine's step)."""
    model.train()
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    losses, norm = [], None
    for batch in micro_batches:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)  # under DeepSpeed the engine steps at the last micro-batch
            losses.append(loss.detach())
            if accelerator.sync_gradients and not deepspeed:  # inf: measure the norm without clipping
                norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
            if norm is None or torch.isfinite(norm):
                optimizer.step()
            optimizer.zero_grad()
    loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    if deepspeed:
        norm = model.get_global_grad_norm()  # the norm before clipping; inf when DeepSpeed skipped
    norm = float(norm) if norm is not None else None
    skipped = not math.isfinite(loss) or (norm is not None and not math.isfinite(norm))
    if not skipped:
        scheduler.step()
    return {"loss": loss, "grad_norm": norm, "skipped": skipped}


@torch.no_grad()
def evaluate(accelerator, model, batches) -> float:
    model.eval()
    losses = [model(**{k: v.to(accelerator.device) for k, v in b.items()}).loss for b in batches]
    mean = torch.stack(losses).mean() if losses else torch.zeros((), device=accelerator.device)
    return accelerator.reduce(mean, reduction="mean").item()


def validate(run) -> dict:
    """val/loss, and val/loss_ema with the EMA weights swapped in (raw weights restored exactly)."""
    acc = run.accelerator
    out = {"val/loss": evaluate(acc, run.model, run.val_batches)}
    if run.ema is not None and run.ema.initialized:
        with run.ema.swapped_into(acc.unwrap_model(run.model)):
            out["val/loss_ema"] = evaluate(acc, run.model, run.val_batches)
    return out
