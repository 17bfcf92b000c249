"""The training loop: one Accelerate process per device, DeepSpeed ZeRO around our optimizer.

Read top to bottom: ``train`` builds the parts (``build.py``), restores a checkpoint (``resume.py``),
then per step: data, ``train_step`` (micro-batches -> clip -> step -> schedule, ``step.py``), health,
EMA, metrics (``meters.py``), eval, checkpoint; the export and the Hub push are ``finish.py``'s.

    accelerate launch --config_file accelerate_configs/cpu_2proc_zero2.yaml \
        -m trainer.cli train configs/tiny.yaml --train.steps 50
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from tqdm.auto import tqdm

from trainer.config import Config
from trainer.hf import hub
from trainer.launch import worker
from trainer.launch.exit_codes import EXIT_DIVERGED, EXIT_OK, EXIT_REQUEUE
from trainer.run import tracking
from trainer.run.build import Run, build_run
from trainer.run.finish import finish, push_export
from trainer.run.meters import StepMeter, announce_phase, global_batch_digest, history_row, human, write_rank_summary
from trainer.run.resume import refuse_nonfinite, restore, save_checkpoint
from trainer.run.step import train_step, validate


@dataclass
class Ending:
    """How this invocation ends: the exit code, the stop every rank agreed on (a signal), the
    step of the last checkpoint written, and whether ``data.epochs`` ran out."""

    last_step: int  # the step this invocation stops at: the run's length or train.stop_at_step
    saved_at: int  # the step of the newest checkpoint (the resumed one at first)
    code: int = EXIT_OK
    signal: str | None = None  # "stop" or "requeue", agreed by every rank
    data_exhausted: bool = False

    def stopped(self, signal: str) -> None:
        self.signal, self.code = signal, EXIT_REQUEUE if signal == "requeue" else EXIT_OK

    @property
    def clean(self) -> bool:
        """Neither an error nor a signal: the run ended by running out of steps or data."""
        return self.code == EXIT_OK and self.signal is None


def train(cfg: Config) -> dict:
    """Run (or resume) the training described by ``cfg``; returns the last step's metrics and the
    process exit code (``trainer/launch/exit_codes.py``).

    SIGTERM/SIGINT end the run after the current step with a checkpoint (exit 0); SIGUSR1 does the
    same and exits ``EXIT_REQUEUE``; ``train.max_skipped`` non-finite steps in a row stop it with
    ``EXIT_DIVERGED`` and no new checkpoint. The ranks agree on all of it every step."""
    run = build_run(cfg)
    acc, tc = run.accelerator, cfg.train
    state = restore(run)
    tracker = tracking.start(run, state)  # puts the wandb run id into state: checkpoints keep it
    meter = StepMeter(run)
    end = Ending(last_step=min(run.total_steps, tc.stop_at_step or run.total_steps), saved_at=state["step"])
    bar = tqdm(total=end.last_step, initial=state["step"], dynamic_ncols=True, desc="train",
               disable=not (acc.is_main_process and cfg.log.progress))
    pusher = hub.HubPusher(cfg.hub, warn=acc.print) if cfg.hub.repo_id and acc.is_main_process else None
    with worker.worker_session(tc.out_dir, acc.device) as signals:
        while state["step"] < end.last_step:
            t0, seq_len, phase = time.perf_counter(), run.loader.seq_len, run.loader.phase
            batches = next_batches(run, state, meter)                                   # data
            if batches is None:
                end.data_exhausted = True
                break
            data_wait = time.perf_counter() - t0
            out = train_step(acc, run.model, run.optimizer, run.scheduler, batches, tc.grad_clip, run.scaler)  # step
            step_s = time.perf_counter() - t0
            state.update(step=state["step"] + 1, tokens_seen=run.loader.tokens_seen)
            verdict = check_health(run, out, state["step"])                            # health
            if verdict == "diverged":
                end.code = EXIT_DIVERGED
                break
            if run.experts is not None:                                                # MoE balance
                out["moe"] = run.experts.step(applied=verdict == "ok", device=acc.device)
            if verdict == "ok" and run.ema is not None:                                # EMA
                run.ema.update(state["step"])
            metrics = meter(out, state, seq_len, phase, batches[0]["input_ids"].shape[0], data_wait, step_s)  # metrics
            meter.history.append(history_row(metrics, state["step"], verdict, meter.batch_sha))
            show_progress(bar, out, metrics, state)
            if (reason := signals.agreed(acc.device)) is not None:
                end.stopped(reason)
            is_last = state["step"] == end.last_step or end.signal is not None
            if (tc.eval_every and state["step"] % tc.eval_every == 0) or is_last:      # eval
                metrics.update(validate(run))
                meter.history[-1].update({k: metrics[k] for k in ("val/loss", "val/loss_ema") if k in metrics})
                acc.print(f"step {state['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                                                                if k.startswith("val/")))
            remember_losses(state, metrics)
            if state["step"] % cfg.log.every == 0 or is_last:
                tracker.log(metrics, state["step"])
            if (cfg.checkpoint.every and state["step"] % cfg.checkpoint.every == 0) or is_last:  # checkpoint
                if not save_checkpoint(run, state):
                    end.code = refuse_nonfinite(acc, state["step"])
                    break
                end.saved_at = state["step"]
                if hub.push_selected(cfg.hub, cfg.checkpoint.every, state["step"], run.total_steps):
                    push_export(run, pusher, state)
            if end.signal is not None:
                acc.print(f"stopped by a signal ({end.signal}) at step {state['step']}; checkpoint saved")
                break
    bar.close()
    return wrap_up(run, state, end, meter, tracker, pusher)


def next_batches(run: Run, state: dict, meter: StepMeter) -> list[dict] | None:
    """The step's micro-batches on the device, its global batch fingerprinted (``meter.batch_sha``);
    None when ``data.epochs`` are used up (every rank stops at the same step: a collective)."""
    acc, cfg = run.accelerator, run.cfg
    announce_phase(run, meter)
    try:
        batches = run.loader.next_step()
    except StopIteration:
        if not cfg.data.epochs:  # repeating forever, only an empty partition runs dry
            raise ValueError(f"data.partitions: a data partition of data.source has no training documents "
                             f"(the source has fewer than {cfg.data.partitions}); lower data.partitions "
                             "(it must stay a multiple of the number of processes)") from None
        acc.print(f"data exhausted after {state['step']} steps (data.epochs)")
        return None
    meter.batch_sha = global_batch_digest(batches, run.loader.last_rows, acc.device)
    return [{k: v.to(acc.device, non_blocking=True) for k, v in b.items()} for b in batches]


def check_health(run: Run, out: dict, step: int) -> str:
    """The verdict on a finished step ('ok', 'skip', 'diverged'; ``trainer/run/health.py``); every verdict
    but 'ok', and a loss spike, is said in one line."""
    acc, tc, health = run.accelerator, run.cfg.train, run.health
    verdict = health.observe(out["loss"], out["grad_norm"], out.get("overflow", False))
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


def show_progress(bar, out: dict, metrics: dict, state: dict) -> None:
    bar.update(1)
    bar.set_postfix(loss=f"{out['loss']:.3f}", tok_s=f"{metrics['train/tokens_per_s']:,.0f}",
                    phase=metrics["train/phase"], seq=metrics["train/seq_len"], mb=metrics["train/micro_batch_size"],
                    seen=human(state["tokens_seen"]), refresh=False)


def remember_losses(state: dict, metrics: dict) -> None:
    """The newest value of every loss metric, with its step, in the trainer state (the model card's)."""
    state["losses"] = {**state.get("losses", {}), **{k: {"step": state["step"], "value": v}
                                                     for k, v in metrics.items() if "loss" in k}}


def wrap_up(run: Run, state: dict, end: Ending, meter: StepMeter, tracker, pusher) -> dict:
    """After the loop: the final checkpoint if the last step has none, the rank summary, the export
    (a run that ran out of steps or data) or how to resume, then the trackers and the process group."""
    acc = run.accelerator
    if end.clean and end.saved_at != state["step"] and not save_checkpoint(run, state):
        end.code = refuse_nonfinite(acc, state["step"])
    write_rank_summary(run, meter.history)
    finished = state["step"] == run.total_steps or (end.data_exhausted and bool(meter.history))
    export_dir = finish(run, state, pusher, export=end.clean and finished,
                        resumable=end.code in (EXIT_OK, EXIT_REQUEUE), wait=end.signal is None)
    tracker.finish()
    acc.end_training()
    return {**meter.last, "step": state["step"], "export_dir": export_dir, "exit_code": end.code}
