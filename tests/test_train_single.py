"""`scaleout train` without a launcher: one process, with DeepSpeed (ZeRO at world size 1) and without."""

import json
import os
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
