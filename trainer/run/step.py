"""One optimizer step and one evaluation: what the loop calls every step and every ``train.eval_every``."""

from __future__ import annotations

import math

import torch
from accelerate.utils import DistributedType

from trainer.run.moe import lm_loss


def aux_coef(accelerator, model) -> float:
    """The balancing loss's coefficient in ``.loss`` (granitemoe, qwen3_moe; 0 for other classes)."""
    config = accelerator.unwrap_model(model).config
    return getattr(config, "router_aux_loss_coef", 0.0) if getattr(config, "output_router_logits", False) else 0.0


def train_step(accelerator, model, optimizer, scheduler, micro_batches, grad_clip: float) -> dict:
    """One optimizer step over ``micro_batches``: the mean language-model loss (and a MoE class's
    balancing loss, ``aux_loss``, which the backward includes), the grad norm before clipping, and
    whether the step was skipped. A non-finite loss or gradient norm skips the step: no optimizer
    or scheduler update (under DeepSpeed its overflow check skips the engine's step)."""
    model.train()
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    coef = aux_coef(accelerator, model)
    losses, aux, norm = [], [], None
    for batch in micro_batches:
        with accelerator.accumulate(model):
            out = model(**batch)
            accelerator.backward(out.loss)  # under DeepSpeed the engine steps at the last micro-batch
            losses.append(lm_loss(out, coef).detach())
            if coef:
                aux.append(out.aux_loss.detach())
            if accelerator.sync_gradients and not deepspeed:  # inf: measure the norm without clipping
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
    if not skipped:
        scheduler.step()
    return {"loss": loss, "grad_norm": norm, "skipped": skipped, **extra}


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
