"""Start-up of ``scaleout train``: seconds from the command to the end of the first optimizer step.

The tiny recipe on 2 CPU processes under ZeRO-2 (the main job's launch), 3 steps, no trackers, no
evaluation before the end. The first step's end is the ``t`` the trainer records for it in
``ranks/rank0.json`` (``time.perf_counter``, CLOCK_MONOTONIC on Linux, the clock this script reads
before it starts the command), so the figure covers the launcher, the quiet torchrun, the workers'
imports, the build of the run and the first step; the rest of the run (the final validation, the
checkpoint, the export, the teardown) is reported beside it.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/startup.py --repeats 3
    # another checkout (e.g. an older commit with its own .venv), measured the same way:
    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench/startup.py --repo /tmp/old --python /tmp/old/.venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["train", "configs/tiny.yaml", "--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml",
        "--train.steps", "3", "--train.eval_every", "0", "--log.trackers", "[]", "--log.progress", "false"]


def one_run(python: str, repo: str) -> tuple[float, float]:
    """(seconds to the end of step 1, seconds for the whole command) of one fresh run."""
    with tempfile.TemporaryDirectory(prefix="scaleout-startup-") as out:
        env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
                   TOKENIZERS_PARALLELISM="false")
        start = time.monotonic()
        r = subprocess.run([python, "-m", "trainer.cli", *ARGS, "--train.out_dir", out], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=900)
        total = time.monotonic() - start
        if r.returncode != 0:
            sys.exit(f"startup.py: the run failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
        with open(os.path.join(out, "ranks", "rank0.json")) as f:
            first = json.load(f)["history"][0]["t"]
    return first - start, total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--repo", default=ROOT, help="checkout whose `python -m trainer.cli` runs (default: this one)")
    p.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    one_run(a.python, a.repo)  # warm-up: caches (tokenizer, DeepSpeed's op build, page cache) filled once
    runs = [one_run(a.python, a.repo) for _ in range(a.repeats)]
    firsts, totals = [r[0] for r in runs], [r[1] for r in runs]
    print(json.dumps({"repo": a.repo, "first_step_s": [round(x, 2) for x in firsts],
                      "first_step_median_s": round(statistics.median(firsts), 2),
                      "whole_run_median_s": round(statistics.median(totals), 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
