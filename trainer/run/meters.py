"""What the loop measures and records: the per-step metrics, the global batch's fingerprint, the
phase announcements, and ``ranks/rank{r}.json`` (what launched tests and benchmarks read)."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time

import torch

from trainer.launch.status import say
from trainer.run import tracking
from trainer.run.build import Run, resolve_compile
from trainer.run.metrics import flops_per_token, matmul_params, mfu, peak_flops_per_device, peak_memory_gb


class StepMeter:
    """The per-step metrics: loss, grad norm, the lr of every group, throughput, MFU (matmul weights +
    attention over the device peak), memory, data wait, curriculum position, skipped steps; and what
    this invocation keeps of them (``history``, written to ``ranks/rank{r}.json``)."""

    def __init__(self, run: Run):
        self.run = run
        self.history: list[dict] = []  # one ``history_row`` per step
        self.last: dict = {}  # the newest step's metrics
        self.batch_sha: str | None = None  # the newest global batch's fingerprint (``global_batch_digest``)
        self.last_phase: int | None = None  # the curriculum phase last announced
        self.flops_token = functools.partial(flops_per_token, matmul_params(run.accelerator.unwrap_model(run.model)),
                                             run.model_config.num_hidden_layers, run.model_config.hidden_size)
        self.peak = peak_flops_per_device()

    def __call__(self, out: dict, state: dict, seq_len: int, phase: int, micro_batch: int, data_wait: float,
                 step_s: float) -> dict:
        run = self.run
        tok_s = run.cfg.train.tokens_per_step / step_s
        self.last = {"train/loss": out["loss"], "train/grad_norm": out["grad_norm"] or float("nan"),
                "train/lr": run.optimizer.param_groups[0]["lr"], **tracking.group_lrs(run.client_optimizer),
                "train/tokens_per_s": tok_s,
                "train/mfu": mfu(tok_s, self.flops_token(seq_len), run.accelerator.num_processes, self.peak),
                "train/seq_len": seq_len, "train/phase": phase, "train/micro_batch_size": micro_batch,
                "train/tokens_seen": state["tokens_seen"], "train/skipped_steps": run.health.skipped,
                "train/data_wait_s": data_wait, "train/peak_memory_gb": peak_memory_gb(),
                **{f"train/{k}": v for k, v in out.items() if k in ("aux_loss", "loss_scale")}, **out.get("moe", {}),
                **({"train/overflow_steps": run.health.overflows} if "loss_scale" in out else {})}
        return self.last


def history_row(metrics: dict, step: int, verdict: str, batch_sha: str) -> dict:
    """What ``ranks/rank{r}.json`` keeps of a step (tests and benchmarks read it)."""
    return {"step": step, "loss": metrics["train/loss"], "seq_len": metrics["train/seq_len"],
            "micro_batch_size": metrics["train/micro_batch_size"], "skipped": verdict == "skip",
            "overflow": verdict == "overflow", "loss_scale": metrics.get("train/loss_scale"),
            "lr": metrics["train/lr"], "t": time.perf_counter(), "data_wait_s": metrics["train/data_wait_s"],
            "peak_memory_gb": metrics["train/peak_memory_gb"], "batch_sha": batch_sha}


def announce_phase(run: Run, meter: StepMeter) -> None:
    """One line when the curriculum enters a new phase (its sequence length and micro-batch)."""
    loader, tc = run.loader, run.cfg.train
    if loader.phase != meter.last_phase:
        run.accelerator.print(
            f"phase {loader.phase}: seq_len {loader.seq_len}, micro-batch {loader.micro_batch_size} x "
            f"{tc.grad_accum} per rank, from {human(loader.tokens_seen)} tokens seen"
            + ("; compiled with static shapes: this phase's first step recompiles" if resolve_compile(tc.compile)
               else ""))
    meter.last_phase = loader.phase


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
    losses). Launched tests read it. A failed write is a one-line warning: training is over by then."""
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
    path = os.path.join(run.cfg.train.out_dir, "ranks", f"rank{acc.process_index}.json")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(summary, f, indent=1)
    except OSError as e:  # a record of the run, not the run: said (once: it is written once), not fatal
        say(f"scaleout train: warning: rank {acc.process_index}: could not write {path} "
            f"({e.strerror or type(e).__name__}); the checkpoints and the export are not affected")


def human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)
