"""fp16 with dynamic loss scaling on CPU (issue 19): ``train.precision fp16`` without DeepSpeed runs under
fp16 autocast with the trainer's ``torch.amp.GradScaler`` (one process and DDP). An overflow is skipped on
every rank with the scale halved and is not divergence; the scale is checkpointed and restored, also at
another number of processes; a 2-process fp16 run tracks the fp32 run. DeepSpeed's fp16 (its own scaler
under ZeRO) needs a GPU: on CPU it is refused in preflight, one line (tests/test_preflight.py)."""

import json
import os

import pytest
from conftest import COMMON, as_args  # tests/ is on sys.path
from test_train_launched import run_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(ROOT, "tests", "workers", "sitecustomize")
FP16 = dict(COMMON, **{"dist.deepspeed_config": "null", "train.precision": "fp16", "train.max_skipped": "2",
                       "checkpoint.keep": "5"})
FP16.pop("log.progress")  # run_train sets it


def history(out_dir, rank: int = 0) -> list[dict]:
    return json.load(open(os.path.join(out_dir, "ranks", f"rank{rank}.json")))["history"]


@pytest.fixture(scope="module")
def fp16_runs(tmp_path_factory):
    """2 processes (DDP): fp16 with gradient overflows injected at steps 3, 4 and 5 (the last rank's, so
    DDP's all-reduce spreads them) stopped at step 6, then continued by one process to step 10; a clean
    fp16 run and an fp32 run of 10 steps."""
    out = {name: tmp_path_factory.mktemp(name) for name in ("faulty", "clean", "fp32")}
    env = {"FAULT_OVERFLOW_STEPS": "3,4,5", "PYTHONPATH": os.pathsep.join([SITE, ROOT])}
    faulty = run_train(out["faulty"], "--num-processes", "2", *as_args(FP16), "--train.stop_at_step", "6", env=env)
    stopped = [history(out["faulty"], r) for r in range(2)]
    resumed = run_train(out["faulty"], *as_args(FP16), accel=None)  # one process: the elastic resume
    clean = run_train(out["clean"], "--num-processes", "2", *as_args(FP16))
    fp32 = run_train(out["fp32"], "--num-processes", "2", *as_args(dict(FP16, **{"train.precision": "fp32"})))
    return {"faulty": faulty, "stopped": stopped, "resumed": resumed, "clean": clean, "fp32": fp32, "out": out}


@pytest.mark.slow
def test_an_overflow_is_skipped_on_every_rank_with_the_scale_halved_and_is_not_divergence(fp16_runs):
    """Three overflows in a row with train.max_skipped 2: the run goes on (a non-finite loss three times would
    have ended it), every rank skips the same steps with the same scale, and the weights stay identical."""
    for rank in fp16_runs["stopped"]:
        assert [h["overflow"] for h in rank] == [False, False, True, True, True, False]
        assert [h["loss_scale"] for h in rank] == [65536.0, 65536.0, 32768.0, 16384.0, 8192.0, 8192.0]
        assert not any(h["skipped"] for h in rank)  # skips toward divergence: none
    assert fp16_runs["faulty"][0]["weights_sha256"] == fp16_runs["faulty"][1]["weights_sha256"]
    lrs = [h["lr"] for h in fp16_runs["stopped"][0]]
    assert lrs[2] == lrs[3] == lrs[4] == lrs[1]  # no scheduler step for an overflow step


@pytest.mark.slow
def test_the_scale_is_checkpointed_and_restored_at_another_number_of_processes(fp16_runs):
    lone = fp16_runs["resumed"][0]  # rank0.json, rewritten by the lone process (rank1.json is the stopped run's)
    assert lone["num_processes"] == 1 and [h["step"] for h in lone["history"]] == [7, 8, 9, 10]
    assert lone["history"][0]["loss_scale"] == 8192.0  # from the step-6 checkpoint, not a fresh 65536


@pytest.mark.slow
def test_a_two_process_fp16_run_tracks_the_fp32_run(fp16_runs):
    """Same batches; the per-step loss of fp16 (autocast, scaled gradients) within 0.02 of fp32's over 10
    steps (measured: see the assertion message)."""
    fp16, fp32 = fp16_runs["clean"][0]["history"], fp16_runs["fp32"][0]["history"]
    assert [h["batch_sha"] for h in fp16] == [h["batch_sha"] for h in fp32]
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(fp16, fp32)]
    print(f"fp16 vs fp32, per-step loss difference: max {max(diffs):.4f}, mean {sum(diffs) / len(diffs):.4f}")
    assert max(diffs) < 0.02, diffs
    assert not any(h["overflow"] for h in fp16)


def test_one_process_fp16_skips_an_overflow_and_restores_its_scale(tmp_path, monkeypatch):
    """One process, in-process ``train()``: an inf gradient at step 2 (a hook on the first parameter) is
    an overflow: skipped, the scale halved, never divergence with train.max_skipped 1; the scale is in the
    checkpoint and a resumed run starts from it."""
    import torch

    from trainer.config import load_config
    from trainer.run import loop

    real, calls = loop.train_step, {"n": 0}

    def train_step(accelerator, model, *args, **kwargs):
        calls["n"] += 1
        hook = None
        if calls["n"] == 2:
            first = next(accelerator.unwrap_model(model).parameters())
            hook = first.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        try:
            return real(accelerator, model, *args, **kwargs)
        finally:
            if hook is not None:
                hook.remove()

    monkeypatch.setattr(loop, "train_step", train_step)
    monkeypatch.chdir(ROOT)
    keys = dict(FP16, **{"train.steps": "4", "train.max_skipped": "1", "checkpoint.every": "2",
                         "train.out_dir": str(tmp_path), "log.progress": "false", "ema.enabled": "false"})
    assert loop.train(load_config("configs/tiny.yaml", as_args(dict(keys, **{"train.stop_at_step": "3"}))))[
        "exit_code"] == 0
    h = history(tmp_path)
    assert [x["overflow"] for x in h] == [False, True, False]
    assert [x["loss_scale"] for x in h] == [65536.0, 32768.0, 32768.0]
    saved = json.load(open(tmp_path / "checkpoints" / "step_000003" / "trainer.json"))
    assert saved["loss_scaler"]["scale"] == 32768.0 and saved["health"]["overflows"] == 1
    assert loop.train(load_config("configs/tiny.yaml", as_args(keys)))["exit_code"] == 0
    assert history(tmp_path)[0]["loss_scale"] == 32768.0  # resumed at step 4 with the saved scale
