"""A run without DeepSpeed (plain DDP, ``dist.deepspeed_config: null``) resumes, at the same and at
another number of processes.

Every DDP rank saves every parameter whole, so each element of the checkpoint arrives from W
shards; resume counts it once (``trainer.state.reshard.copy_covered``, the offline reader's rule too).
All runs are the real ``scaleout train`` (W=2 launched, W=1 a lone process) on conftest.COMMON (10 steps, grad_accum 2,
a curriculum phase change after step 4, EMA, 3 layers), with checkpoints at 2, 4, ..., 10:

- W=2 stopped at step 4 (``train.stop_at_step``) and run again with the same command ends with the
  uninterrupted W=2 run's weights, fp32 master, optimizer state and EMA on every rank, bit for bit;
- the stopped W=2 run's step-4 checkpoint continued at W=1, and the uninterrupted W=1 run's step-4
  checkpoint continued at W=2, end within 1e-5 (max error over max value, per tensor) of the
  uninterrupted run they started from, as tests/test_elastic.py does for ZeRO. fp32 reduction
  orders differ across W; measured: 3.5e-6 for W=2 -> 1. (The uninterrupted W=1 and W=2 runs
  themselves differ by 2.4e-5 in the embedding: Adam's first steps, with second moments near zero,
  amplify the reduction-order differences of the first steps, so the comparison is against the
  run whose first steps the resumed one shares.)
"""

import os
import shutil

import pytest
import torch
from conftest import COMMON, HASHES, as_args  # tests/ is on sys.path
from test_train_launched import run_train

KINDS = ("master", "ema", "optim.momentum_buffer", "optim.exp_avg", "optim.exp_avg_sq")
DDP = dict(COMMON, **{"dist.deepspeed_config": "null", "checkpoint.keep": "5"})
DDP.pop("log.progress")  # run_train sets it


def ddp_train(out_dir, world: int, **overrides) -> list[dict]:
    keys = dict(DDP, **overrides)
    if world == 1:  # a lone process: what `accelerate launch --num_processes 1` would start, without the launcher
        return run_train(out_dir, *as_args(keys), accel=None)
    return run_train(out_dir, "--num-processes", str(world), *as_args(keys))


def tensors(out_dir, step: int = 10) -> dict:
    from trainer.state.reader import read_named_tensors

    path = os.path.join(out_dir, "checkpoints", f"step_{step:06d}")
    return {kind: read_named_tensors(path, kind) for kind in KINDS}


def assert_close(got: dict, want: dict, tol: float = 1e-5) -> None:
    for kind in KINDS:
        assert want[kind] and set(got[kind]) == set(want[kind]), kind
        for name, w in want[kind].items():
            err = float((got[kind][name] - w).abs().max() / w.abs().max().clamp_min(1e-12))
            assert err <= tol, (kind, name, err)


def continued(tmp_path_factory, name: str, src_out, world: int) -> tuple:
    """``src_out``'s step-4 checkpoint alone in a fresh out_dir, continued at ``world`` processes to step 10."""
    out = tmp_path_factory.mktemp(name)
    shutil.copytree(os.path.join(src_out, "checkpoints", "step_000004"),
                    os.path.join(out, "checkpoints", "step_000004"))
    ranks = ddp_train(out, world)
    return out, ranks


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of this module, once: uninterrupted W=2 and W=1, W=2 stopped at 4."""
    w2, w1, stopped = (tmp_path_factory.mktemp(n) for n in ("ddp_w2", "ddp_w1", "ddp_stopped"))
    return {"w2": (w2, ddp_train(w2, 2)), "w1": (w1, ddp_train(w1, 1)),
            "stopped": (stopped, ddp_train(stopped, 2, **{"train.stop_at_step": "4"}))}


@pytest.mark.slow
def test_ddp_run_stopped_and_resumed_is_bit_exact(runs):
    (out, stopped), (_, want) = runs["stopped"], runs["w2"]
    assert [r["num_processes"] for r in stopped] == [2, 2] and "DEEPSPEED" not in stopped[0]["distributed_type"]
    assert "run the same command again to resume" in open(os.path.join(out, "console.log")).read()
    resumed = ddp_train(out, 2)
    assert "resumed from" in open(os.path.join(out, "console.log")).read()
    assert [h["step"] for h in resumed[0]["history"]] == list(range(5, 11))
    for got, ref in zip(resumed, want):
        assert {k: got[k] for k in HASHES} == {k: ref[k] for k in HASHES}
    assert [h["batch_sha"] for h in stopped[0]["history"] + resumed[0]["history"]] == \
        [h["batch_sha"] for h in want[0]["history"]]


@pytest.mark.slow
def test_ddp_resume_from_two_processes_at_one(runs, tmp_path_factory):
    out, ranks = continued(tmp_path_factory, "ddp_2to1", runs["stopped"][0], 1)
    assert "resharded from W=2 to W=1" in open(os.path.join(out, "console.log")).read()
    assert len(ranks) == 1
    assert_close(tensors(out), tensors(runs["w2"][0]))


@pytest.mark.slow
def test_ddp_resume_from_one_process_at_two(runs, tmp_path_factory):
    out, ranks = continued(tmp_path_factory, "ddp_1to2", runs["w1"][0], 2)
    assert "resharded from W=1 to W=2" in open(os.path.join(out, "console.log")).read()
    assert len(ranks) == 2 and ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    assert_close(tensors(out), tensors(runs["w1"][0]))


@pytest.mark.slow
def test_zero2_matches_ddp(runs, zero2_reference):
    """Same 2 ranks, same data: the shared ZeRO-2 run (conftest.COMMON: sharded Muon on flat partitions,
    DeepSpeed's clipping and accumulation, grad_accum 2) and plain DDP (whole-param Muon, accelerate's)
    hold the same fp32 weights after 4 steps (to 1e-5; fp32 reduction orders differ, so the gap grows
    with steps) and had the same losses."""
    from trainer.state.reader import read_named_tensors

    (ddp_out, ddp), zero = runs["stopped"], zero2_reference.summaries()
    assert "DEEPSPEED" in zero[0]["distributed_type"] and "DEEPSPEED" not in ddp[0]["distributed_type"]
    assert ddp[0]["num_processes"] == 2
    a = read_named_tensors(os.path.join(zero2_reference.out_dir, "checkpoints", "step_000004"), "master")
    b = read_named_tensors(os.path.join(ddp_out, "checkpoints", "step_000004"), "master")
    assert a.keys() == b.keys()
    worst = max(((a[k] - b[k]).norm() / b[k].norm().clamp_min(1e-12)).item() for k in a)
    print("max relative weight difference ZeRO-2 vs DDP after 4 steps:", worst)
    assert worst < 1e-5, worst
    la = torch.tensor([h["loss"] for h in zero[0]["history"][:4]])
    lb = torch.tensor([h["loss"] for h in ddp[0]["history"]])
    assert len(lb) == 4 and torch.allclose(la, lb, rtol=1e-5)
