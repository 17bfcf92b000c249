"""One optimizer step and one evaluation: what the loop calls every step and every ``train.eval_every``."""

from __future__ import annotations

import contextlib
import math

import torch
from accelerate.utils import DistributedType

from models.moe import aux_loss_coef, lm_loss


def aux_coef(accelerator, model) -> float:
    """The balancing loss's coefficient in ``.loss`` (granitemoe, qwen3_moe; 0 for other classes)."""
    return aux_loss_coef(accelerator.unwrap_model(model).config)


def train_step(accelerator, model, optimizer, scheduler, micro_batches, grad_clip: float, scaler=None) -> dict:
    """One optimizer step over ``micro_batches``: the mean language-model loss (and a MoE class's
    balancing loss, ``aux_loss``, which the backward includes), the grad norm before clipping, and
    whether the step was skipped. A non-finite loss or gradient norm skips the step: no optimizer
    or scheduler update (under DeepSpeed its overflow check skips the engine's step).

    fp16 (``scaler``: a ``torch.amp.GradScaler``, without DeepSpeed): the forward runs under fp16
    autocast, the backward on the scaled loss; at the last micro-batch the gradients are unscaled
    before clipping and before the optimizer (so Newton-Schulz sees true gradients). A step whose
    gradients overflowed is skipped and the scale lowered (``overflow``, ``loss_scale``): under DDP
    the gradients were all-reduced first, so every rank finds the same overflow. Under DeepSpeed's
    fp16 its own scaler does the same inside the engine."""
    model.train()
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    coef = aux_coef(accelerator, model)
    losses, aux, norm = [], [], None
    for batch in micro_batches:
        with accelerator.accumulate(model):
            with _autocast(accelerator.device, scaler):
                out = model(**batch)
            accelerator.backward(out.loss if scaler is None else scaler.scale(out.loss))  # DeepSpeed: steps at the last
            losses.append(lm_loss(out, coef).detach())
            if coef:
                aux.append(out.aux_loss.detach())
            if accelerator.sync_gradients and not deepspeed:  # inf: measure the norm without clipping
                if scaler is not None:
                    scaler.unscale_(optimizer)
                norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
            if norm is None or torch.isfinite(norm):
                optimizer.step()
            optimizer.zero_grad()
    loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
    extra = {"aux_loss": accelerator.reduce(torch.stack(aux).mean(), reduction="mean").item()} if aux else {}
    if deepspeed:
        norm = model.get_global_grad_norm()  # the norm before clipping; inf when DeepSpeed skipped
    norm = float(norm) if norm is not None else None
    skipped = not math.isfinite(loss) or (norm is not None and not math.isfinite(norm))
    extra.update(_loss_scale(model, scaler, deepspeed, skipped and math.isfinite(loss)))
    if not skipped:
        scheduler.step()
    return {"loss": loss, "grad_norm": norm, "skipped": skipped, **extra}


def _autocast(device: torch.device, scaler):
    """fp16 autocast when the trainer drives a GradScaler; nothing otherwise (bf16 is accelerate's)."""
    if scaler is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.float16)


def _loss_scale(model, scaler, deepspeed: bool, grads_overflowed: bool) -> dict:
    """After an fp16 step: whether it overflowed (a finite loss whose gradients were not: the scaler
    skipped it and lowered the scale, which is not divergence) and the scale now; {} without fp16."""
    if scaler is not None:
        scaler.update()  # halves the scale after an overflow, grows it after growth_interval clean steps
        return {"overflow": grads_overflowed, "loss_scale": scaler.get_scale()}
    scale = getattr(getattr(model, "optimizer", None), "cur_scale", None) if deepspeed else None
    if deepspeed and getattr(model, "fp16_enabled", lambda: False)() and scale is not None:
        return {"overflow": not model.was_step_applied() and grads_overflowed, "loss_scale": float(scale)}
    return {}


@torch.no_grad()
def evaluate(accelerator, model, batches) -> float:
    model.eval()
    coef = aux_coef(accelerator, model)  # validation is the language-model loss alone
    losses = [lm_loss(model(**{k: v.to(accelerator.device) for k, v in b.items()}), coef) for b in batches]
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
