"""EMA overhead: the real trainer (2 CPU processes, ZeRO-2, sharded Muon) with the EMA off, at
``ema.every 1`` and at ``ema.every 10``, on the tiny and 125m presets.

Each variant is one ``scaleout train`` run; the figure is the median wall time between the ends of
consecutive optimizer steps (EMA update, logging and all) after the first few, read from the
rank-0 summary. Variants are interleaved and repeated (``--repeats``) so that a noisy neighbour
on a shared machine hits all of them alike; the table reports the median over repeats and the
overhead against "off" from the same repeat.

    .venv/bin/python scripts/bench/ema.py --presets tiny,125m --repeats 2
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
STEPS = {"tiny": 40, "125m": 12}
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


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="tiny,125m")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    rows = []
    for preset in args.presets.split(","):
        times = {v: [] for v in VARIANTS}
        for r in range(args.repeats):
            for v in VARIANTS:
                times[v].append(one_run(preset, v))
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
