"""The training loop: one Accelerate process per device, DeepSpeed ZeRO around our optimizer.

Read top to bottom: ``train`` builds the parts, then runs ``train_step`` (micro-batches ->
clip -> step -> schedule) until the run length; eval, checkpoint and export are single
calls outside it.

    accelerate launch --config_file accelerate_configs/cpu_2proc_zero2.yaml \
        -m trainer.cli train configs/tiny.yaml --train.steps 50
"""

from __future__ import annotations

import functools
import math
import os
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from models import count_params
from trainer import checkpoint as ckpt
from trainer import lifecycle
from trainer.build import build_initialized_model, build_model_config, final_seq_len, total_steps
from trainer.config import Config
from trainer.data import TrainLoader, build_tokenizer, build_val_batches, micro_batch_size
from trainer.dist import build_accelerator, deepspeed_config, resolve_precision
from trainer.metrics import flops_per_token, mfu, peak_flops_per_device
from trainer.optim import build_optimizer
from trainer.schedule import build_scheduler


def train_step(accelerator, model, optimizer, scheduler, micro_batches, grad_clip: float) -> dict:
    """One optimizer step over ``micro_batches``; returns the step's mean loss and grad norm."""
    model.train()
    losses, norm = [], None
    for batch in micro_batches:
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            accelerator.backward(loss)  # under DeepSpeed the engine steps at the last micro-batch
            losses.append(loss.detach())
            if accelerator.sync_gradients and accelerator.distributed_type != "DEEPSPEED" and grad_clip > 0:
                norm = accelerator.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            optimizer.zero_grad()
    scheduler.step()
    loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean")
    get = getattr(model, "get_global_grad_norm", None)  # DeepSpeed engine: the norm before clipping
    norm = get() if get is not None else norm
    return {"loss": loss.item(), "grad_norm": float(norm) if norm is not None else float("nan")}


@torch.no_grad()
def evaluate(accelerator, model, batches) -> float:
    model.eval()
    losses = [model(**{k: v.to(accelerator.device) for k, v in b.items()}).loss for b in batches]
    mean = torch.stack(losses).mean() if losses else torch.zeros((), device=accelerator.device)
    return accelerator.reduce(mean, reduction="mean").item()


def export_model(accelerator, model, tokenizer, out: str) -> None:
    """A plain transformers folder (safetensors + config + tokenizer); collective."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        # DeepSpeed's gathered state dict holds a tied readout as a separate copy; drop the alias so the
        # folder matches what save_pretrained writes for an unwrapped model.
        first: dict = {}
        for name, p in unwrapped.named_parameters(remove_duplicate=False):
            if id(p) in first:
                state.pop(name, None)
            first.setdefault(id(p), name)
        unwrapped.save_pretrained(out, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(out)
    accelerator.wait_for_everyone()


@dataclass
class Run:
    """The parts of one run, built once by ``build_run``."""

    cfg: Config
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loader: object
    tokenizer: object
    model_config: object
    val_batches: list
    total_steps: int
    resume_dir: str | None
    meta: dict = field(default_factory=dict)


def build_run(cfg: Config) -> Run:
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    precision = resolve_precision(cfg.train.precision)
    steps = total_steps(cfg)
    resume_dir = ckpt.resolve_resume(cfg.checkpoint.resume, cfg.train.out_dir)
    tokenizer = build_tokenizer(cfg.data)
    model_config = build_model_config(cfg, tokenizer, resume_dir)
    loader = TrainLoader(cfg.data, tokenizer, rank=rank, world_size=world,
                         tokens_per_step=cfg.train.tokens_per_step, grad_accum=cfg.train.grad_accum,
                         max_seq_len=model_config.max_position_embeddings)
    ds = None
    if cfg.dist.deepspeed_config:
        ds = deepspeed_config(cfg.dist.deepspeed_config, micro_batch_size=loader.micro_batch_size,
                              grad_accum=cfg.train.grad_accum, world_size=world,
                              grad_clip=cfg.train.grad_clip, precision=precision)
    accelerator = build_accelerator(ds, grad_accum=cfg.train.grad_accum, precision=precision,
                                    log_with=cfg.log.trackers, project_dir=cfg.train.out_dir)
    assert accelerator.num_processes == world and accelerator.process_index == rank

    model = build_initialized_model(cfg, model_config)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg.train, steps)  # stepped by us, not through prepare
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    val_batches = build_val_batches(cfg.data, tokenizer, seq_len=final_seq_len(cfg),
                                    micro_batch_size=micro_batch_size(cfg.train.tokens_per_step, world,
                                                                      cfg.train.grad_accum, final_seq_len(cfg)),
                                    n_batches=cfg.train.eval_batches, rank=rank, world_size=world)
    meta = {"config": cfg.to_dict(), "model_config": model_config.to_dict(), "versions": ckpt.versions(),
            "world_size": world}
    return Run(cfg, accelerator, model, optimizer, scheduler, loader, tokenizer, model_config, val_batches,
               steps, resume_dir, meta)


def save_checkpoint(run: Run, state: dict) -> None:
    ckpt.save(run.accelerator, os.path.join(run.cfg.train.out_dir, "checkpoints"), state["step"],
              loader=run.loader, trainer_state=state, meta=run.meta, model_config=run.model_config,
              tokenizer=run.tokenizer, keep=run.cfg.checkpoint.keep)


def train(cfg: Config) -> dict:
    """Run (or resume) the training described by ``cfg``; returns the last step's metrics.

    SIGTERM/SIGINT (Ctrl-C) end the run after the current step with a checkpoint on every rank,
    SIGUSR1 (a SLURM preemption) too with ``exit_code`` 75; the ranks agree on it with one tiny
    all-reduce per step (``trainer.lifecycle``)."""
    run = build_run(cfg)
    acc, loader, tc = run.accelerator, run.loader, cfg.train
    state = {"step": 0, "tokens_seen": 0}
    if run.resume_dir is not None:
        state = ckpt.load(acc, run.resume_dir, loader=loader)
        acc.print(f"resumed from {run.resume_dir} at step {state['step']}")
    if cfg.log.trackers:
        _prepare_wandb_env(cfg, acc)
        acc.init_trackers(cfg.log.project, config=_flat(cfg.to_dict()),
                          init_kwargs={"wandb": {"dir": tc.out_dir}})
    flops_token = functools.partial(flops_per_token, count_params(acc.unwrap_model(run.model)),
                                    run.model_config.num_hidden_layers, run.model_config.hidden_size)
    peak = peak_flops_per_device()
    stop = min(run.total_steps, tc.stop_at_step or run.total_steps)
    bar = tqdm(total=stop, initial=state["step"], disable=not (acc.is_main_process and cfg.log.progress),
               dynamic_ncols=True, desc="train")
    metrics, history, saved_at, last_phase = {}, [], state["step"], None
    with lifecycle.worker_session(tc.out_dir, acc.device) as signal:
        while state["step"] < stop:
            t0 = time.perf_counter()
            seq_len, phase = loader.seq_len, loader.phase
            if phase != last_phase:
                acc.print(f"phase {phase}: seq_len {seq_len}, micro-batch {loader.micro_batch_size} x "
                          f"{tc.grad_accum} per rank, from {_human(loader.tokens_seen)} tokens seen")
                last_phase = phase
            try:
                micro_batches = [{k: v.to(acc.device) for k, v in b.items()} for b in loader.next_step()]
            except StopIteration:  # data.epochs used up: every rank stops at the same step (collective)
                acc.print(f"data exhausted after {state['step']} steps (data.epochs)")
                break
            out = train_step(acc, run.model, run.optimizer, run.scheduler, micro_batches, tc.grad_clip)
            tok_s = tc.tokens_per_step / (time.perf_counter() - t0)
            state.update(step=state["step"] + 1, tokens_seen=loader.tokens_seen)
            mb = micro_batches[0]["input_ids"].shape[0]
            metrics = {"train/loss": out["loss"], "train/grad_norm": out["grad_norm"],
                       "train/lr": run.optimizer.param_groups[0]["lr"], "train/tokens_per_s": tok_s,
                       "train/mfu": mfu(tok_s, flops_token(seq_len), acc.num_processes, peak),
                       "train/seq_len": seq_len, "train/phase": phase, "train/micro_batch_size": mb,
                       "train/tokens_seen": state["tokens_seen"]}
            history.append({"step": state["step"], "loss": out["loss"], "seq_len": seq_len, "micro_batch_size": mb})
            if not math.isfinite(out["loss"]):
                raise FloatingPointError(f"loss is {out['loss']} at step {state['step']}; lower optim.lr or "
                                         "train.grad_clip and resume from the last checkpoint")
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.3f}", tok_s=f"{tok_s:,.0f}", phase=phase, seq=seq_len, mb=mb,
                            seen=_human(state["tokens_seen"]), refresh=False)
            interrupted = signal.agreed(acc.device)
            is_last = state["step"] == stop or interrupted
            if (tc.eval_every and state["step"] % tc.eval_every == 0) or is_last:
                metrics["val/loss"] = evaluate(acc, run.model, run.val_batches)
                acc.print(f"step {state['step']}: val loss {metrics['val/loss']:.4f}")
            if cfg.log.trackers and (state["step"] % cfg.log.every == 0 or is_last):
                acc.log(metrics, step=state["step"])
            if (cfg.checkpoint.every and state["step"] % cfg.checkpoint.every == 0) or is_last:
                save_checkpoint(run, state)
                saved_at = state["step"]
            if interrupted:
                acc.print(f"stopped by a signal ({interrupted}) at step {state['step']}; checkpoint saved")
                break
    bar.close()
    if saved_at != state["step"]:
        save_checkpoint(run, state)
    write_rank_summary(acc, run.model, run.optimizer, tc.out_dir, history)
    export_dir = os.path.join(tc.out_dir, "export")
    ckpt_root = os.path.join(tc.out_dir, "checkpoints")
    if state["step"] == run.total_steps or (history and state["step"] < stop and not signal.received):
        export_model(acc, run.model, run.tokenizer, export_dir)
        acc.print(f"checkpoints: {ckpt_root}\nexported model: {export_dir}")
    else:
        acc.print(f"stopped at step {state['step']} of {run.total_steps}; checkpoints: {ckpt_root} "
                  "(run the same command again to resume)")
    acc.end_training()
    return {**metrics, "step": state["step"], "export_dir": export_dir, "exit_code": signal.exit_code}


def write_rank_summary(accelerator, model, optimizer, out_dir: str, history: list[dict]) -> None:
    """``<out_dir>/ranks/rank{r}.json``: what this process saw (its rank, the world size, the size of
    its optimizer partition under ZeRO, a hash of its weights, its losses). Launched tests read it."""
    import hashlib
    import json

    params = list(accelerator.unwrap_model(model).parameters())
    digest = hashlib.sha256()
    for p in params:
        digest.update(p.detach().float().cpu().numpy().tobytes())
    summary = {
        "process_index": accelerator.process_index, "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "model_numel": sum(p.numel() for p in {id(p): p for p in params}.values()),
        "optimizer_partition_numel": sum(p.numel() for g in optimizer.param_groups for p in g["params"]),
        "weights_sha256": digest.hexdigest(), "history": history,
    }
    os.makedirs(os.path.join(out_dir, "ranks"), exist_ok=True)
    with open(os.path.join(out_dir, "ranks", f"rank{accelerator.process_index}.json"), "w") as f:
        json.dump(summary, f, indent=1)


def _prepare_wandb_env(cfg: Config, accelerator) -> None:
    """Without credentials wandb would prompt or fail: write real offline run files instead
    (``wandb sync`` uploads them later). The key itself is never read into config or logs."""
    if "wandb" not in cfg.log.trackers or "WANDB_MODE" in os.environ or os.environ.get("WANDB_API_KEY"):
        return
    netrc = os.path.expanduser("~/.netrc")
    if os.path.exists(netrc) and "api.wandb.ai" in open(netrc).read():
        return
    os.environ["WANDB_MODE"] = "offline"
    accelerator.print("wandb: no credentials found, logging offline under " + cfg.train.out_dir)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out
