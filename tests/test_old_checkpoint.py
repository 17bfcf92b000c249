"""A checkpoint written before the layout move resumes after it, bit-exact.

The code of commit ``fe6e441`` (the last before ``trainer/`` was regrouped into folders) is taken
from this repository's history (``git archive``) and trains conftest's tiny ZeRO-2 run on 2 processes
to step 4 with its own ``scaleout train``. Its step-2 and step-4 checkpoints hold exactly the tensors
the current code's uninterrupted run (conftest's ``zero2_reference``) saved at those steps, and the
current code resumes from its step 4 to step 10 and ends bit-for-bit where that run ended: weights,
fp32 master, optimizer state and EMA, with the same losses on the way."""

import os
import subprocess
import sys
import tarfile

import pytest
import torch
from conftest import HASHES, RUN_ENV, TINY_RUN, hashes, rank_summaries

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BEFORE_THE_MOVE = "fe6e441"
LAUNCH = ["--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml"]
KINDS = ("master", "ema", "optim.momentum_buffer", "optim.exp_avg", "optim.exp_avg_sq")


def old_code(dest) -> str:
    """The trainer, models and configs of BEFORE_THE_MOVE, extracted into ``dest``."""
    try:
        archive = subprocess.run(["git", "archive", "--format=tar", BEFORE_THE_MOVE, "trainer", "models", "configs",
                                  "ds_configs", "accelerate_configs"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:  # a checkout without history (an sdist, a shallow clone)
        pytest.skip(f"needs git history with commit {BEFORE_THE_MOVE}: {e}")
    path = dest / "archive.tar"
    path.write_bytes(archive.stdout)
    with tarfile.open(path) as tar:
        tar.extractall(dest / "old", filter="data")
    return str(dest / "old")


@pytest.fixture(scope="module")
def old_run(tmp_path_factory):
    """BEFORE_THE_MOVE's own `scaleout train` of TINY_RUN, stopped with a checkpoint at step 4."""
    tmp = tmp_path_factory.mktemp("before_the_move")
    code, out = old_code(tmp), tmp / "run"
    cmd = [sys.executable, "-m", "trainer.cli", "train", *TINY_RUN, "--train.stop_at_step", "4",
           "--train.out_dir", str(out), *LAUNCH]
    r = subprocess.run(cmd, cwd=code, env=dict(RUN_ENV, PYTHONPATH=code), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["step_000002", "step_000004"]
    return out


def tensors(ckpt_dir) -> dict:
    from trainer.state.reader import read_named_tensors

    return {kind: read_named_tensors(str(ckpt_dir), kind) for kind in KINDS}


@pytest.mark.slow
def test_old_checkpoints_hold_what_the_new_code_saves(old_run, zero2_reference):
    zero2_reference.summaries()  # waits for the run
    for step in ("step_000002", "step_000004"):
        old, new = tensors(old_run / "checkpoints" / step), tensors(os.path.join(zero2_reference.out_dir,
                                                                                 "checkpoints", step))
        for kind in KINDS:
            assert set(old[kind]) == set(new[kind]) and new[kind], (step, kind)
            assert all(torch.equal(old[kind][n], new[kind][n]) for n in new[kind]), (step, kind)


@pytest.mark.slow
def test_old_checkpoint_resumes_bit_exact(old_run, zero2_reference):
    r = subprocess.run([sys.executable, "-m", "trainer.cli", "train", *TINY_RUN, "--train.out_dir", str(old_run),
                        *LAUNCH], cwd=ROOT, env=RUN_ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    assert "resumed from" in r.stdout + r.stderr and "step_000004" in r.stdout + r.stderr
    got, want = rank_summaries(old_run), zero2_reference.summaries()
    assert hashes(got) == hashes(want), HASHES
    assert [h["loss"] for h in got[0]["history"]] == [h["loss"] for h in want[0]["history"][4:]]
