"""Checkpoint save and load time and bytes per rank, on the tiny and 125m presets (2 CPU processes, ZeRO-2).

Each preset runs in 2 processes launched by ``accelerate launch`` (this file, ``--worker``): the
real ``build_run``, one optimizer step (so the optimizer state and the EMA exist), then
``--repeats`` times: ``trainer.run.loop.save_checkpoint`` (the run's whole save: finiteness check,
shards, data, manifest with checksums, rename) and ``trainer.run.loop.restore`` from it (validation
included). Both functions exist with the same signature before and after elastic resume, so the
same script measures either format: put the code to measure first on PYTHONPATH, e.g. the
format before elastic resume from a plain export of an older commit::

    git archive 8e53dcc | tar -x -C /tmp/before
    PYTHONPATH=/tmp/before .venv/bin/python scripts/bench/checkpoint.py --presets tiny 125m
    PYTHONPATH=. .venv/bin/python scripts/bench/checkpoint.py --presets tiny 125m

Bytes: every file of the checkpoint; "per rank" is the largest set of files one rank writes of
its own (names with its rank; the ZeRO optimizer partition, the state shard, its data), "shared"
the files written once (model weights under the old format, config, tokenizer, manifest).
Times are the median over repeats (page cache warm, the machine's other load included).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRESETS = {"tiny": ["--data.curriculum", "256:inf", "--train.tokens_per_step", "4096"],
           "125m": ["--model.preset", "125m", "--data.curriculum", "64:inf", "--train.tokens_per_step", "256",
                    "--data.vocab_size", "8192"]}


def _owner(name: str, world: int) -> int | None:
    """The rank a file belongs to (None: written once, shared)."""
    m = re.search(r"rank_?(\d+)", os.path.basename(name))
    if m and not name.endswith("mp_rank_00_model_states.pt"):
        return int(m.group(1)) % world if "zero_pp_rank" not in name else int(m.group(1))
    m = re.search(r"part(\d+)\.pt$", name)
    return int(m.group(1)) % world if m else None


def sizes(path: str, world: int) -> dict:
    per_rank, shared, total = [0] * world, 0, 0
    for d, _, names in os.walk(path):
        for n in names:
            full = os.path.join(d, n)
            size = os.path.getsize(full)
            total += size
            owner = _owner(os.path.relpath(full, path), world)
            if owner is None:
                shared += size
            else:
                per_rank[owner] += size
    return {"total_bytes": total, "per_rank_bytes": max(per_rank), "shared_bytes": shared}


def worker(preset: str, out: str, repeats: int) -> None:
    from trainer.config import load_config
    from trainer.run.build import build_run
    from trainer.run.loop import restore, save_checkpoint, train_step
    from trainer.state import checkpoint

    cfg = load_config(os.path.join(ROOT, "configs", "tiny.yaml"),
                      PRESETS[preset] + ["--train.out_dir", out, "--train.steps", "2", "--train.grad_accum", "1",
                                         "--log.trackers", "[]", "--ema.enabled", "true", "--checkpoint.keep", "1",
                                         "--train.eval_batches", "1"])
    run = build_run(cfg)
    acc = run.accelerator
    restore(run)
    batches = [{k: v.to(acc.device) for k, v in b.items()} for b in run.loader.next_step()]
    train_step(acc, run.model, run.optimizer, run.scheduler, batches, cfg.train.grad_clip)
    saves, loads, path = [], [], None
    for i in range(repeats):
        acc.wait_for_everyone()
        t0 = time.perf_counter()
        save_checkpoint(run, {"step": i + 1, "tokens_seen": run.loader.tokens_seen})
        acc.wait_for_everyone()
        saves.append(time.perf_counter() - t0)
        path = checkpoint.list_checkpoints(os.path.join(out, "checkpoints"))[-1]
        run.resume_candidates = [path]
        t0 = time.perf_counter()
        restore(run)
        acc.wait_for_everyone()
        loads.append(time.perf_counter() - t0)
    if acc.is_main_process:
        res = {"preset": preset, "world": acc.num_processes, "format": "elastic" if os.path.isdir(
            os.path.join(path, "state")) else "accelerate", "params": sum(p.numel() for p in run.model.parameters()),
            "save_s": statistics.median(saves), "load_s": statistics.median(loads), **sizes(path, acc.num_processes)}
        print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    ap.add_argument("--presets", nargs="+", default=["tiny"], choices=list(PRESETS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", nargs=2, metavar=("PRESET", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(*args.worker, args.repeats)
    for preset in args.presets:
        with tempfile.TemporaryDirectory() as out:
            cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--config_file",
                   "accelerate_configs/cpu_2proc_zero2.yaml", os.path.abspath(__file__), "--repeats",
                   str(args.repeats), "--worker", preset, out]
            env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline")
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
            print(lines[0][len("RESULT "):], flush=True)


if __name__ == "__main__":
    from trainer.launch.process_group import run_main

    sys.exit(run_main(main))  # the process group is destroyed on every exit path
