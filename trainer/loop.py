"""The training loop: one Accelerate process per device, DeepSpeed ZeRO around our optimizer.

Read top to bottom: ``train`` builds the parts (``trainer/build.py``), restores a checkpoint,
then runs ``train_step`` (micro-batches -> clip -> step -> schedule) until the run length;
the EMA update, eval, checkpoint and export are single calls outside it.

    accelerate launch --config_file accelerate_configs/cpu_2proc_zero2.yaml \
        -m trainer.cli train configs/tiny.yaml --train.steps 50
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time

import torch
from accelerate.utils import DistributedType
from tqdm.auto import tqdm

from models import count_params
from trainer import checkpoint as ckpt
from trainer import hub, lifecycle, tracking
from trainer.build import Run, build_run, resolve_compile
from trainer.config import Config
from trainer.data.loader import all_ranks_agree
from trainer.exit_codes import EXIT_DIVERGED, EXIT_OK, EXIT_REQUEUE
from trainer.metrics import flops_per_token, matmul_params, mfu, peak_flops_per_device, peak_memory_gb
from trainer.schedule import describe_change


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


def validate(run: Run) -> dict:
    """val/loss, and val/loss_ema with the EMA weights swapped in (raw weights restored exactly)."""
    acc = run.accelerator
    out = {"val/loss": evaluate(acc, run.model, run.val_batches)}
    if run.ema is not None and run.ema.initialized:
        with run.ema.swapped_into(acc.unwrap_model(run.model)):
            out["val/loss_ema"] = evaluate(acc, run.model, run.val_batches)
    return out


def export_model(run: Run, out: str, trainer_state: dict) -> str:
    """The export folder (``trainer/export.py``: safetensors, config, generation config, tokenizer, model
    card) with the EMA or the raw weights (``export.weights``); collective. Returns which weights."""
    from trainer.export import write_export
    from trainer.model_card import build_card

    acc = run.accelerator
    use_ema = run.ema is not None and run.cfg.export.weights in ("auto", "ema")
    state = acc.get_state_dict(run.model)
    if use_ema:
        full = run.ema.assemble()  # the one gather of the EMA shards
        state = {**state, **{n: t.to(state[n].dtype) for n, t in full.items()}} if state is not None else None
    weights = "ema" if use_ema else "raw"
    if acc.is_main_process:
        card = build_card(run.meta, trainer_state, run.model_config, weights,
                          count_params(acc.unwrap_model(run.model)))
        write_export(out, state, run.model_config, run.tokenizer, card)
    acc.wait_for_everyone()
    return weights


def push_export(run: Run, pusher: hub.HubPusher | None, state: dict) -> None:
    """Export the weights at ``state["step"]`` (collective) and queue the folder for a background push (rank 0)."""
    step = state["step"]
    out = hub.step_export_dir(run.cfg.train.out_dir, step)
    weights = export_model(run, out, state)
    if pusher is not None:
        pusher.submit(out, hub.step_revision(run.cfg.hub, step), f"scaleout: step {step} ({weights} weights)")


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
    state = {**state, "health": run.health.state_dict(), "total_steps": run.total_steps}
    ckpt.save(run.accelerator, os.path.join(run.cfg.train.out_dir, "checkpoints"), state["step"],
              optimizer=run.client_optimizer, fragments=run.fragments, shapes=run.shapes, scheduler=run.scheduler,
              loader=run.loader, trainer_state=state, meta=run.meta, model_config=run.model_config,
              tokenizer=run.tokenizer, keep=run.cfg.checkpoint.keep, ema=run.ema)
    return True


def train(cfg: Config) -> dict:
    """Run (or resume) the training described by ``cfg``; returns the last step's metrics and the
    process exit code (``trainer/exit_codes.py``).

    SIGTERM/SIGINT end the run after the current step with a checkpoint (exit 0); SIGUSR1 does the
    same and exits ``EXIT_REQUEUE``; ``train.max_skipped`` non-finite steps in a row stop it with
    ``EXIT_DIVERGED`` and no new checkpoint. The ranks agree on all of it every step."""
    run = build_run(cfg)
    acc, loader, tc = run.accelerator, run.loader, cfg.train
    state = restore(run)
    tracker = tracking.start(run, state)  # puts the wandb run id into state: checkpoints keep it
    meter = StepMeter(run)
    stop = min(run.total_steps, tc.stop_at_step or run.total_steps)
    bar = tqdm(total=stop, initial=state["step"], disable=not (acc.is_main_process and cfg.log.progress),
               dynamic_ncols=True, desc="train")
    metrics, history, saved_at, last_phase, reason, exit_code = {}, [], state["step"], None, None, EXIT_OK
    pusher = hub.HubPusher(cfg.hub, warn=acc.print) if cfg.hub.repo_id and acc.is_main_process else None
    with lifecycle.worker_session(tc.out_dir, acc.device) as signals:
        while state["step"] < stop:
            t0 = time.perf_counter()
            seq_len, phase = loader.seq_len, loader.phase
            last_phase = announce_phase(run, last_phase)
            try:
                batches = loader.next_step()
            except StopIteration:  # data.epochs used up: every rank stops at the same step (collective)
                if not cfg.data.epochs:  # repeating forever, only an empty partition runs dry
                    raise ValueError(f"data.partitions: a data partition of data.source has no training documents "
                                     f"(the source has fewer than {cfg.data.partitions}); lower data.partitions "
                                     "(it must stay a multiple of the number of processes)") from None
                acc.print(f"data exhausted after {state['step']} steps (data.epochs)")
                break
            batch_sha = global_batch_digest(batches, loader.last_rows, acc.device)
            micro_batches = [{k: v.to(acc.device, non_blocking=True) for k, v in b.items()} for b in batches]
            data_wait = time.perf_counter() - t0
            out = train_step(acc, run.model, run.optimizer, run.scheduler, micro_batches, tc.grad_clip)
            step_s = time.perf_counter() - t0
            state.update(step=state["step"] + 1, tokens_seen=loader.tokens_seen)
            verdict = check_health(run, out, state["step"])
            if verdict == "diverged":
                exit_code = EXIT_DIVERGED
                break
            if verdict == "ok" and run.ema is not None:
                run.ema.update(state["step"])
            metrics = meter(out, state, seq_len, phase, micro_batches[0]["input_ids"].shape[0], data_wait, step_s)
            history.append(history_row(metrics, state["step"], verdict, batch_sha))
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.3f}", tok_s=f"{metrics['train/tokens_per_s']:,.0f}", phase=phase,
                            seq=seq_len, mb=metrics["train/micro_batch_size"], seen=_human(state["tokens_seen"]),
                            refresh=False)
            reason = signals.agreed(acc.device)
            is_last = state["step"] == stop or reason is not None
            if (tc.eval_every and state["step"] % tc.eval_every == 0) or is_last:
                metrics.update(validate(run))
                acc.print(f"step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                                if k.startswith("val/")))
            state["losses"] = {**state.get("losses", {}), **{k: {"step": state["step"], "value": v}
                                                             for k, v in metrics.items() if "loss" in k}}
            if state["step"] % cfg.log.every == 0 or is_last:
                tracker.log(metrics, state["step"])
            if (cfg.checkpoint.every and state["step"] % cfg.checkpoint.every == 0) or is_last:
                if not save_checkpoint(run, state):
                    exit_code = _refuse_nonfinite(acc, state["step"])
                    break
                saved_at = state["step"]
                if hub.push_selected(cfg.hub, cfg.checkpoint.every, state["step"], run.total_steps):
                    push_export(run, pusher, state)
            if reason is not None:
                acc.print(f"stopped by a signal ({reason}) at step {state['step']}; checkpoint saved")
                exit_code = EXIT_REQUEUE if reason == "requeue" else EXIT_OK
                break
    bar.close()
    if exit_code == EXIT_OK and reason is None and saved_at != state["step"] and not save_checkpoint(run, state):
        exit_code = _refuse_nonfinite(acc, state["step"])
    write_rank_summary(run, history)
    finished = state["step"] == run.total_steps or (history and state["step"] < stop and reason is None)
    export_dir = finish(run, state, pusher, export=exit_code == EXIT_OK and reason is None and finished,
                        resumable=exit_code in (EXIT_OK, EXIT_REQUEUE), wait=reason is None)
    tracker.finish()
    acc.end_training()
    return {**metrics, "step": state["step"], "export_dir": export_dir, "exit_code": exit_code}


def announce_phase(run: Run, last_phase: int | None) -> int:
    """One line when the curriculum enters a new phase (its sequence length and micro-batch)."""
    loader, tc = run.loader, run.cfg.train
    if loader.phase != last_phase:
        run.accelerator.print(
            f"phase {loader.phase}: seq_len {loader.seq_len}, micro-batch {loader.micro_batch_size} x "
            f"{tc.grad_accum} per rank, from {_human(loader.tokens_seen)} tokens seen"
            + ("; compiled with static shapes: this phase's first step recompiles" if resolve_compile(tc.compile)
               else ""))
    return loader.phase


def check_health(run: Run, out: dict, step: int) -> str:
    """The verdict on a finished step ('ok', 'skip', 'diverged'; ``trainer/health.py``); every verdict
    but 'ok', and a loss spike, is said in one line."""
    acc, tc, health = run.accelerator, run.cfg.train, run.health
    verdict = health.observe(out["loss"], out["grad_norm"])
    if verdict == "diverged":
        acc.print(f"error: step {step} is the {tc.max_skipped}th in a row with a non-finite loss "
                  "or gradient (train.max_skipped); the run diverged. Lower optim.lr / optim.adamw_lr or "
                  "train.grad_clip and resume from the last checkpoint (nothing new was saved)")
    elif verdict == "skip":
        acc.print(f"step {step}: non-finite loss {out['loss']} / grad norm {out['grad_norm']}; "
                  f"step skipped ({health.consecutive} in a row, train.max_skipped {tc.max_skipped})")
    elif health.spike(out["loss"]):
        acc.print(f"warning: loss {out['loss']:.3f} has stayed above {tc.spike_factor}x its running mean "
                  f"{health.running_mean:.3f} for {tc.spike_steps} steps (step {step})")
    return verdict


class StepMeter:
    """The per-step metrics: loss, grad norm, the lr of every group, throughput, MFU (matmul weights +
    attention over the device peak), memory, data wait, curriculum position, skipped steps."""

    def __init__(self, run: Run):
        self.run = run
        self.flops_token = functools.partial(flops_per_token, matmul_params(run.accelerator.unwrap_model(run.model)),
                                             run.model_config.num_hidden_layers, run.model_config.hidden_size)
        self.peak = peak_flops_per_device()

    def __call__(self, out: dict, state: dict, seq_len: int, phase: int, micro_batch: int, data_wait: float,
                 step_s: float) -> dict:
        run = self.run
        tok_s = run.cfg.train.tokens_per_step / step_s
        return {"train/loss": out["loss"], "train/grad_norm": out["grad_norm"] or float("nan"),
                "train/lr": run.optimizer.param_groups[0]["lr"], **tracking.group_lrs(run.client_optimizer),
                "train/tokens_per_s": tok_s,
                "train/mfu": mfu(tok_s, self.flops_token(seq_len), run.accelerator.num_processes, self.peak),
                "train/seq_len": seq_len, "train/phase": phase, "train/micro_batch_size": micro_batch,
                "train/tokens_seen": state["tokens_seen"], "train/skipped_steps": run.health.skipped,
                "train/data_wait_s": data_wait, "train/peak_memory_gb": peak_memory_gb()}


def history_row(metrics: dict, step: int, verdict: str, batch_sha: str) -> dict:
    """What ``ranks/rank{r}.json`` keeps of a step (tests and benchmarks read it)."""
    return {"step": step, "loss": metrics["train/loss"], "seq_len": metrics["train/seq_len"],
            "micro_batch_size": metrics["train/micro_batch_size"], "skipped": verdict == "skip",
            "lr": metrics["train/lr"], "t": time.perf_counter(), "data_wait_s": metrics["train/data_wait_s"],
            "peak_memory_gb": metrics["train/peak_memory_gb"], "batch_sha": batch_sha}


def finish(run: Run, state: dict, pusher: hub.HubPusher | None, *, export: bool, resumable: bool,
           wait: bool) -> str:
    """End of an invocation: the final export (pushed to the Hub's main when ``hub.repo_id``) or how
    to resume; then the pending pushes (waited for unless a signal's grace time is running) and the
    background threads. Collective (the export). Returns the export directory."""
    acc, out_dir = run.accelerator, run.cfg.train.out_dir
    export_dir, ckpt_root = os.path.join(out_dir, "export"), os.path.join(out_dir, "checkpoints")
    if export:
        weights = export_model(run, export_dir, state)
        acc.print(f"checkpoints: {ckpt_root}\nexported model ({weights} weights): {export_dir}")
        if pusher is not None:
            pusher.submit(export_dir, "main", f"scaleout: final model, step {state['step']} ({weights} weights)")
    elif resumable:
        acc.print(f"stopped at step {state['step']} of {run.total_steps}; checkpoints: {ckpt_root} "
                  "(run the same command again to resume)")
    if pusher is not None:
        pusher.close(run.cfg.hub.wait_timeout if wait else 0)
    if run.ema is not None:
        run.ema.close()
    run.loader.close()
    return export_dir


def _refuse_nonfinite(acc, step: int) -> int:
    acc.print(f"error: the weights, optimizer state or EMA hold non-finite values at step {step}; no checkpoint "
              "was written. Lower optim.lr / optim.adamw_lr and resume from the last checkpoint")
    return EXIT_DIVERGED


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def global_batch_digest(batches: list[dict], rows: list[int], device) -> str:
    """A fingerprint of the step's global batch that does not depend on the world size: the sum, over
    every rank's rows, of a 40-bit hash of (global row number, tokens) (``TrainLoader.last_rows``).
    Reads the loader's CPU batches; collective: one int64 all-reduce."""
    local = torch.cat([b["input_ids"] for b in batches])
    assert len(rows) == len(local)
    mine = sum(int.from_bytes(hashlib.blake2b(r.to_bytes(8, "little") + x.numpy().tobytes(), digest_size=5).digest(),
                              "little") for r, x in zip(rows, local))
    total = torch.tensor([mine], dtype=torch.int64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(total)
    return f"{int(total.item()):016x}"


def split_matrices(run: Run) -> list[str]:
    """Muon matrices this rank holds only part of (they straddle a ZeRO partition boundary)."""
    muon = {i for i, g in enumerate(run.client_optimizer.param_groups) if g.get("kind") == "muon"}
    held_groups = [i for i, g in enumerate(run.client_optimizer.param_groups) for _ in g["params"]]
    return sorted(name for g, frags in zip(held_groups, run.fragments) if g in muon
                  for name, _, numel, _ in frags if numel < math.prod(run.shapes[name]))


def write_rank_summary(run: Run, history: list[dict]) -> None:
    """``<out_dir>/ranks/rank{r}.json``: what this process saw (its rank, the world size, the size of
    its optimizer partition under ZeRO, hashes of its weights, optimizer state and EMA slices, its
    losses). Launched tests read it."""
    acc, opt = run.accelerator, run.client_optimizer
    params = list(acc.unwrap_model(run.model).parameters())
    held = [p for g in opt.param_groups for p in g["params"]]
    opt_state = [opt.state[p][k] for p in held for k in sorted(opt.state[p]) if torch.is_tensor(opt.state[p][k])]
    summary = {
        "process_index": acc.process_index, "num_processes": acc.num_processes,
        "distributed_type": str(acc.distributed_type),
        "model_numel": sum(p.numel() for p in {id(p): p for p in params}.values()),
        "optimizer_partition_numel": sum(p.numel() for p in held),
        "weights_sha256": _digest(params), "master_sha256": _digest(held), "optimizer_sha256": _digest(opt_state),
        "ema_sha256": _digest(run.ema.state_dict()["shadow"]) if run.ema is not None else None,
        "ema_bytes": run.ema.nbytes() if run.ema is not None else 0,
        "skipped_steps": run.health.skipped, "split_muon_matrices": split_matrices(run), "history": history,
    }
    os.makedirs(os.path.join(run.cfg.train.out_dir, "ranks"), exist_ok=True)
    with open(os.path.join(run.cfg.train.out_dir, "ranks", f"rank{acc.process_index}.json"), "w") as f:
        json.dump(summary, f, indent=1)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)

