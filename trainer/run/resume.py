"""Checkpoints from the loop's side: restore the newest intact one (and put the recipe's optimizer
settings and schedule over it), and save one unless the state is non-finite. The files themselves
are ``trainer/state/checkpoint.py``'s."""

from __future__ import annotations

import os

import torch

from models.moe import trained_buffers
from trainer.data.loader import all_ranks_agree
from trainer.launch.exit_codes import EXIT_DIVERGED
from trainer.optim.schedule import describe_change
from trainer.run.build import Run
from trainer.state import checkpoint as ckpt


def restore(run: Run) -> dict:
    """Resume from the newest intact checkpoint (falling back past damaged ones), then apply the
    recipe's optimizer settings and schedule over the checkpoint's; or start the EMA at step 0."""
    acc = run.accelerator
    state = {"step": 0, "tokens_seen": 0, "total_steps": run.total_steps}
    resume_dir = ckpt.select_valid(run.resume_candidates, warn=acc.print)
    if resume_dir is None and run.resume_candidates:
        raise ValueError(f"checkpoint.resume: no intact checkpoint among {len(run.resume_candidates)} in "
                         f"{os.path.dirname(run.resume_candidates[0])}; move them away or pass "
                         "--checkpoint.resume null to start over")
    if resume_dir is None:
        if run.ema is not None:
            run.ema.update(0)
        return state
    state = ckpt.load(acc, resume_dir, optimizer=run.client_optimizer, fragments=run.fragments,
                      model=acc.unwrap_model(run.model), scheduler=run.scheduler, loader=run.loader, ema=run.ema,
                      sharded=run.sharded)
    saved_world = ckpt.saved_world_size(resume_dir)
    if saved_world is not None and saved_world != acc.num_processes:
        acc.print(f"resharded from W={saved_world} to W={acc.num_processes}")
    if "health" in state:
        run.health.load_state_dict(state["health"])
    if run.scaler is not None and "loss_scaler" in state:  # fp16: the scale the run had reached (any W)
        run.scaler.load_state_dict(state["loss_scaler"])
    changes = apply_recipe(run, state.get("total_steps", run.total_steps), state["step"])
    acc.print(f"resumed from {resume_dir} at step {state['step']}" + (f"; {changes}" if changes else ""))
    return state


def apply_recipe(run: Run, saved_total: int, step: int) -> str:
    """Put the recipe's per-group settings (lr, weight decay, betas, momentum, ...) and the schedule
    over what the checkpoint restored; returns one line saying what changed ('' if nothing)."""
    changes = []
    opt, sched = run.client_optimizer, run.scheduler
    for group, recipe in zip(opt.param_groups, run.recipe_groups):
        for key, value in recipe.items():
            # the lr a group holds is the scheduled one; the recipe's is the base (initial_lr)
            old = group.get("initial_lr", group.get(key)) if key == "lr" else group.get(key)
            if (list(old) if isinstance(old, tuple) else old) != (list(value) if isinstance(value, tuple) else value):
                changes.append(f"{recipe.get('name', '?')}.{key} {old} -> {value}")
                group[key] = value
        group["initial_lr"] = recipe["lr"]
    sched.base_lrs = [g["lr"] for g in run.recipe_groups]
    for group, base, fn in zip(opt.param_groups, sched.base_lrs, sched.lr_lambdas):
        group["lr"] = base * fn(sched.last_epoch)
    if saved_total != run.total_steps:
        changes.append(describe_change(run.cfg.train, saved_total, run.total_steps, step))
    return ", ".join(changes)


def state_is_finite(run: Run) -> bool:
    """Every rank's weights (as the optimizer holds them), optimizer state and EMA are finite. Collective."""
    opt = run.client_optimizer
    tensors = [p for g in opt.param_groups for p in g["params"]]
    tensors += [v for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    ok = all(bool(t.isfinite().all()) for t in tensors) and (run.ema is None or run.ema.all_finite())
    return all_ranks_agree(ok)


def save_checkpoint(run: Run, state: dict) -> bool:
    """Write a checkpoint unless the state is non-finite (then nothing is written; returns False)."""
    if not state_is_finite(run):
        return False
    state = {**state, "health": run.health.state_dict(), "total_steps": run.total_steps,
             **({"loss_scaler": run.scaler.state_dict()} if run.scaler is not None else {})}
    ckpt.save(run.accelerator, os.path.join(run.cfg.train.out_dir, "checkpoints"), state["step"],
              optimizer=run.client_optimizer, fragments=run.fragments, shapes=run.shapes, scheduler=run.scheduler,
              loader=run.loader, trainer_state=state, meta=run.meta, model_config=run.model_config,
              tokenizer=run.tokenizer, keep=run.cfg.checkpoint.keep, ema=run.ema,
              buffers=trained_buffers(run.accelerator.unwrap_model(run.model)))
    return True


def refuse_nonfinite(acc, step: int) -> int:
    acc.print(f"error: the weights, optimizer state or EMA hold non-finite values at step {step}; no checkpoint "
              "was written. Lower optim.lr / optim.adamw_lr and resume from the last checkpoint")
    return EXIT_DIVERGED
