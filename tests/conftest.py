"""Shared by the launched tests that compare a distributed run with the plain 2-process one
(test_reliability.py, test_slurm.py, test_multinode.py, test_elastic.py)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny 2-process ZeRO-2 run the launched tests share (tests/test_reliability.py kills and damages
# it, test_slurm.py preempts it, test_multinode.py runs it on two "machines", test_elastic.py reshards
# it): 10 steps of 2,048 tokens in 2 micro-batches, the curriculum's phase change (64 -> 128) after
# step 4, a checkpoint every 2 steps, EMA on; 3 layers, so that ZeRO's partition boundaries at W=2
# and at W=4 fall inside Muon matrices.
COMMON = {"train.steps": "10", "checkpoint.every": "2", "checkpoint.keep": "2", "ema.enabled": "true",
          "ema.decay": "0.9", "data.curriculum": "64:8K,128:inf", "train.tokens_per_step": "2048",
          "train.grad_accum": "2", "train.eval_every": "0", "train.warmup_steps": "3", "log.trackers": "[]",
          "log.progress": "false", "model.n_layers": "3"}


def as_args(keys: dict) -> list[str]:
    return [arg for k, v in keys.items() for arg in (f"--{k}", v)]


TINY_RUN = ["configs/tiny.yaml", *as_args(COMMON)]
HASHES = ("weights_sha256", "master_sha256", "optimizer_sha256", "ema_sha256")
RUN_ENV = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


# What a process that aborts at exit leaves in a run's output: the C++ runtime's line, torchrun's
# report of a worker killed by a signal (its own SIGTERM/SIGKILL of peers is not reported), and the
# quiet torchrun's traceback for an unexplained failure (trainer/lifecycle.py).
ABORT_MARKS = ("terminate called", "SIGABRT", "exitcode: -6", "ChildFailedError", "Signals.SIG", "Traceback")


def assert_no_abort(output: str) -> None:
    """No process of the run aborted at exit (trainer/process_group.py) and none left a traceback."""
    found = [m for m in ABORT_MARKS if m in output]
    assert not found, (found, output[-4000:])


def rank_summaries(out_dir, world: int = 2) -> list[dict]:
    return [json.load(open(os.path.join(out_dir, "ranks", f"rank{r}.json"))) for r in range(world)]


def hashes(summaries: list[dict]) -> list[dict]:
    """Per rank: the weights, its fp32 master slice, its optimizer state and EMA slices."""
    return [{k: s[k] for k in HASHES} for s in summaries]


class _Reference:
    """TINY_RUN uninterrupted (every checkpoint kept), started in the background (a SLURM job's
    requeue waits and start-up latencies overlap it):
    `scaleout train --accelerate-config accelerate_configs/cpu_2proc_zero2.yaml`."""

    def __init__(self, out_dir):
        self.out_dir, self._summaries = out_dir, None
        keep_all = as_args(dict(COMMON, **{"checkpoint.keep": "5"}))  # every checkpoint: 2, 4, ..., 10
        cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", *keep_all, "--accelerate-config",
               "accelerate_configs/cpu_2proc_zero2.yaml", "--train.out_dir", str(out_dir)]
        self.log = open(os.path.join(os.path.dirname(out_dir), "reference.log"), "w+")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=RUN_ENV, stdout=self.log, stderr=subprocess.STDOUT)

    def summaries(self) -> list[dict]:
        """Waits for the run; its rank summaries."""
        if self._summaries is None:
            rc = self.proc.wait(timeout=600)
            self.log.seek(0)
            assert rc == 0, f"reference run exit {rc}:\n{self.log.read()[-6000:]}"
            self._summaries = rank_summaries(self.out_dir)
            assert [s["num_processes"] for s in self._summaries] == [2, 2]
        return self._summaries


@pytest.fixture(scope="session")
def zero2_reference(tmp_path_factory):
    """The plain single-node 2-process ZeRO-2 run of TINY_RUN; ``.summaries()`` waits for it."""
    ref = _Reference(tmp_path_factory.mktemp("zero2_reference") / "run")
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()
