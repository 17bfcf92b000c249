"""EMA overhead with the EMA off, at ``ema.every 1`` and at ``ema.every 10``, on the tiny and 125m presets.

tiny: the real trainer (2 CPU processes, ZeRO-2, sharded Muon, the README main job's batch); each
variant is one ``scaleout train`` run and the figure is the median wall time between the ends of
consecutive optimizer steps (EMA update, logging and all) after the first few, from the rank-0
summary. 125m: a 2-process run of 125m takes minutes per step on this CPU, so it is measured in
one process (``--inproc``): forward + backward + AdamW step on 1 x 512 tokens, with the
``ShardEMA`` over whole parameters, i.e. the EMA of the full model on one rank -- W times what a
rank of a W-process run holds, so an upper bound. Variants are interleaved and repeated
(``--repeats``) so that a noisy neighbour hits all of them alike; the overhead is against "off"
from the same repeat, the median over repeats.

    .venv/bin/python scripts/bench/ema.py --presets tiny --repeats 2
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/ema.py --presets 125m --inproc --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VARIANTS = {"off": ["--ema.enabled", "false"], "every=1": ["--ema.enabled", "true", "--ema.every", "1"],
            "every=10": ["--ema.enabled", "true", "--ema.every", "10"]}
# tiny: the README main job's batch; 125m: 2 x 512 tokens per rank and step (a CPU-sized batch).
PRESETS = {"tiny": ["configs/tiny.yaml", "--data.curriculum", "256:inf", "--train.tokens_per_step", "4096"],
           "125m": ["configs/125m.yaml", "--data.curriculum", "512:inf", "--train.tokens_per_step", "2048",
                    "--train.grad_accum", "1", "--data.vocab_size", "8192", "--mup.enabled", "true"]}
STEPS = {"tiny": 40, "125m": 10}
SKIP = {"tiny": 5, "125m": 3}


def one_run(preset: str, variant: str) -> float:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "trainer.cli", "train", *PRESETS[preset], "--accelerate-config",
               "accelerate_configs/cpu_2proc_zero2.yaml", "--train.out_dir", out, "--train.steps",
               str(STEPS[preset]), "--train.eval_every", "0", "--checkpoint.every", "0", "--log.trackers", "[]",
               "--log.progress", "false", *VARIANTS[variant]]
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline")
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
        history = json.load(open(os.path.join(out, "ranks", "rank0.json")))["history"]
    ends = [h["t"] for h in history]
    gaps = [b - a for a, b in zip(ends, ends[1:])][SKIP[preset]:]
    return statistics.median(gaps)


def inproc_run(preset: str, variant: str, steps: int = 5, skip: int = 1) -> float:
    """One process: the preset's model, AdamW (Muon's fp32 Newton-Schulz would make the step, and so
    the denominator, 4x longer on this CPU), 1 x 512 tokens per step, EMA per variant."""
    import time

    import torch

    sys.path.insert(0, ROOT)
    from models import build_model, granite_config, resolve_preset
    from trainer.config import load_config
    from trainer.optim import build_optimizer
    from trainer.state.ema import EmaConfig, ShardEMA

    cfg = load_config(os.path.join(ROOT, "configs", f"{preset}.yaml"), ["--optim.name", "adamw"])
    model = build_model(granite_config(resolve_preset(preset), vocab_size=8192), seed=0)
    opt = build_optimizer(model, cfg)
    ema = None
    if variant != "off":
        every = int(variant.split("=")[1])
        ema = ShardEMA.from_optimizer(opt, [list(g["params"]) for g in opt.param_groups],
                                      dict(model.named_parameters()), EmaConfig(enabled=True, every=every))
        ema.update(0)
    ids = torch.randint(0, 8192, (1, 512), generator=torch.Generator().manual_seed(0))
    ends = []
    for step in range(1, steps + 1):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if ema is not None:
            ema.update(step)
        ends.append(time.perf_counter())
    if ema is not None:
        ema.close()
    return statistics.median([b - a for a, b in zip(ends, ends[1:])][skip - 1:])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    ap.add_argument("--presets", default="tiny")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--inproc", action="store_true", help="one process, the EMA over whole params (see above)")
    args = ap.parse_args(argv)
    measure = inproc_run if args.inproc else one_run
    rows = []
    for preset in args.presets.split(","):
        times = {v: [] for v in VARIANTS}
        for r in range(args.repeats):
            for v in VARIANTS:
                times[v].append(measure(preset, v))
                print(f"{preset} repeat {r} {v}: {times[v][-1] * 1000:.1f} ms/step", flush=True)
        base = statistics.median(times["off"])
        for v in VARIANTS:
            over = statistics.median([t / o - 1 for t, o in zip(times[v], times["off"])])
            rows.append(f"| {preset} | {v} | {statistics.median(times[v]) * 1000:.1f} | "
                        f"{'-' if v == 'off' else f'{100 * over:+.1f}%'} |")
        print(f"{preset}: off {base * 1000:.1f} ms/step")
    print("\n| preset | EMA | median ms/step | overhead vs off |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
