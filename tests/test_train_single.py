"""`scaleout train` without a launcher: one process, with DeepSpeed (ZeRO at world size 1) and without."""

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("ds", ["ds_configs/zero2.json", "null"])
def test_single_process_run(tmp_path, ds):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--train.steps", "6",
           "--train.out_dir", str(tmp_path), "--data.curriculum", "64:8K,128:inf", "--train.tokens_per_step", "2048",
           "--log.trackers", "[]", "--log.progress", "false", "--dist.deepspeed_config", ds]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "phase 1: seq_len 128" in r.stdout
    rank = json.load(open(tmp_path / "ranks" / "rank0.json"))
    assert rank["num_processes"] == 1
    assert [h["seq_len"] for h in rank["history"]] == [64] * 4 + [128] * 2
    assert ("DEEPSPEED" in rank["distributed_type"]) == (ds != "null")
    assert (tmp_path / "export" / "model.safetensors").exists()


def test_resume_applies_the_recipes_lr_and_extends_wsd(tmp_path):
    """A finished WSD run extended with a lower optim.lr: the resumed run uses the recipe's lr (not the
    checkpoint's), says so in one line, and continues the stable phase instead of re-warming up."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1")
    base = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--train.out_dir", str(tmp_path),
            "--data.curriculum", "64:inf", "--train.tokens_per_step", "1024", "--log.trackers", "[]",
            "--log.progress", "false", "--train.warmup_steps", "2", "--train.schedule", "wsd",
            "--train.decay_frac", "0.2", "--train.eval_every", "0"]

    def run(*extra):
        r = subprocess.run(base + list(extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        return r.stdout, json.load(open(tmp_path / "ranks" / "rank0.json"))["history"]

    _, first = run("--train.steps", "6", "--optim.lr", "0.02")
    out, second = run("--train.steps", "20", "--optim.lr", "0.01")
    line = next(x for x in out.splitlines() if x.startswith("resumed from"))
    assert "muon_hidden.lr" in line and "run length 6 -> 20" in line and "stable phase to step 16" in line
    old, new = re.search(r"muon_hidden\.lr (\S+) -> (\S+?),", line).groups()  # base lrs, not the decayed one
    assert float(old) == pytest.approx(2 * float(new)), line
    assert second[0]["step"] == 7
    assert second[0]["lr"] == pytest.approx(first[2]["lr"] * 0.5)  # both in the stable phase: the new base lr
