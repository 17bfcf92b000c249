"""A 2-process ZeRO-2 run that survives what users do to it: SIGKILL of every process at the worst
moments, damaged checkpoints, non-finite losses. Every run goes through the real `scaleout train`
launcher; faults are injected into the workers by tests/workers/faults.py (through sitecustomize).

The reference is one uninterrupted run; interrupted and damaged runs must end with the same
weights, fp32 master slices, optimizer state and EMA on every rank, bit for bit."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import COMMON, HASHES, assert_no_abort  # tests/ is on sys.path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(ROOT, "tests", "workers", "sitecustomize")
pytestmark = pytest.mark.slow  # every test reads or repeats a launched 2-process run


def start(out_dir, *overrides, env=None):
    """``overrides``: '--key', 'value' pairs replacing COMMON's."""
    keys = dict(COMMON, **{k[2:]: v for k, v in zip(overrides[::2], overrides[1::2])})
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([SITE, ROOT]), **(env or {}))
    cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--accelerate-config",
           "accelerate_configs/cpu_2proc_zero2.yaml", "--train.out_dir", str(out_dir)]
    cmd += [arg for k, v in keys.items() for arg in (f"--{k}", v)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def run(out_dir, *overrides, env=None, expect=0):
    proc = start(out_dir, *overrides, env=env)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, out[-6000:]
    return out


def summaries(out_dir):
    return [json.load(open(os.path.join(out_dir, "ranks", f"rank{r}.json"))) for r in range(2)]


def kill_at(out_dir, point: str, step: int):
    """Run until rank 0 reaches ``point`` of ``step``, then SIGKILL every process of the run."""
    mark = os.path.join(str(out_dir), f"mark-{point}")
    proc = start(out_dir, env={"FAULT_PAUSE": f"{point}:{step}", "FAULT_MARK": mark})
    deadline = time.time() + 300
    while not os.path.exists(mark):
        assert proc.poll() is None, proc.stdout.read()[-6000:]
        assert time.time() < deadline, f"never reached {point}:{step}"
        time.sleep(0.2)
    everyone = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    assert len(everyone) >= 4  # launcher, accelerate/torchrun, 2 workers
    for p in everyone:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.communicate(timeout=60)
    psutil.wait_procs(everyone, timeout=30)
    assert not [p for p in everyone if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def kill_one_worker_at(out_dir, point: str, step: int, rank: int) -> str:
    """Run until rank 0 reaches ``point`` of ``step`` (it pauses until torchrun's SIGTERM), SIGKILL the
    worker of ``rank`` only (as the kernel's OOM killer would); the launcher's output."""
    mark = os.path.join(str(out_dir), f"mark-{point}-{step}-rank{rank}")  # not kill_at's, which may be there
    proc = start(out_dir, env={"FAULT_PAUSE": f"{point}:{step}", "FAULT_MARK": mark, "FAULT_UNTIL_SIGNAL": "1"})
    deadline = time.time() + 300
    while not os.path.exists(mark):
        assert proc.poll() is None, proc.stdout.read()[-6000:]
        assert time.time() < deadline, f"never reached {point}:{step}"
        time.sleep(0.2)
    workers = [p for p in psutil.Process(proc.pid).children(recursive=True)
               if "trainer.cli" in p.cmdline() and p.environ().get("RANK") == str(rank)]
    assert len(workers) == 1, workers
    workers[0].send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGKILL, out[-6000:]
    return out


def checkpoints(out_dir):
    return sorted(os.listdir(os.path.join(out_dir, "checkpoints")))


@pytest.fixture(scope="module")
def reference(zero2_reference):
    """The uninterrupted run (conftest.py; checkpoints at 2, 4, ..., 10, all kept). Tests copy it
    before they change anything."""
    summaries = zero2_reference.summaries()
    out = zero2_reference.out_dir
    assert checkpoints(out) == ["step_000002", "step_000004", "step_000006", "step_000008", "step_000010"]
    return out, summaries


def assert_same_end(out_dir, reference):
    got, want = summaries(out_dir), reference[1]
    for g, w in zip(got, want):
        assert {k: g[k] for k in HASHES} == {k: w[k] for k in HASHES}


def test_sigkill_everywhere_then_resume_is_bit_exact(tmp_path, reference):
    """SIGKILL to every process mid-step (3), right after a save (4), in the middle of a save (6)
    and half-way through deleting an old checkpoint (8), then to one worker only (rank 1, mid-step
    9: the launcher says one line, naming the rank, the signal and the command that resumes, exit
    137, torchrun's report in the launch log); each rerun resumes from the newest complete checkpoint
    (step 2: mid-phase; step 4: the curriculum's phase boundary, 64 -> 128 after 8K tokens; grad_accum
    2), and the last one, that very command, ends bit-for-bit where the uninterrupted run did, with
    the same losses on the way."""
    out = tmp_path / "killed"
    kill_at(out, "mid_step", 3)
    assert checkpoints(out) == ["step_000002"]
    kill_at(out, "after_save", 4)
    assert checkpoints(out) == ["step_000002", "step_000004"]
    kill_at(out, "mid_save", 6)
    assert "step_000006.partial" in checkpoints(out)
    assert not os.path.exists(out / "checkpoints" / "step_000006.partial" / "COMPLETE")
    kill_at(out, "mid_delete", 8)
    half = out / "checkpoints" / "step_000004"  # the old one being deleted: marker gone first
    assert half.exists() and not (half / "COMPLETE").exists()
    console = kill_one_worker_at(out, "mid_step", 9, rank=1)
    assert_no_abort(console)  # torchrun's report and rank 0's lost-peer traceback are in the launch log
    errors = [line for line in console.splitlines() if "error:" in line]
    assert len(errors) == 1 and "worker rank 1 (pid " in errors[0] and "killed by SIGKILL" in errors[0], console
    launch_log = errors[0].split("tracebacks: ")[1].split(")")[0]
    assert launch_log.startswith(str(out / "logs" / "launcher-")) and "ChildFailedError" not in console
    assert "SIGKILL" in open(launch_log).read() and "worker rank 0" in open(launch_log).read()
    command = shlex.split(errors[0].split(f"in {out}: ")[1])
    assert command[:3] == ["scaleout", "train", "configs/tiny.yaml"] and command[-2:] == ["--checkpoint.resume", "auto"]
    rerun = subprocess.run([sys.executable, "-m", "trainer.cli", *command[1:]], cwd=ROOT, capture_output=True,
                           text=True, timeout=600, env=dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1",
                                                            TOKENIZERS_PARALLELISM="false", PYTHONPATH=ROOT))
    assert rerun.returncode == 0, rerun.stderr[-6000:]
    log = rerun.stdout + rerun.stderr
    assert "resumed from" in log and "step_000008" in log.split("resumed from")[1].splitlines()[0]
    assert_same_end(out, reference)
    want = reference[1][0]["history"]
    assert [h["seq_len"] for h in want] == [64] * 4 + [128] * 6
    assert [h["loss"] for h in summaries(out)[0]["history"]] == [h["loss"] for h in want[8:]]


def _damaged_copy(tmp_path, reference, name):
    out = tmp_path / name
    shutil.copytree(reference[0], out)
    return out, out / "checkpoints" / "step_000010"


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def test_damaged_newest_checkpoints_fall_back(tmp_path, reference):
    """The newest checkpoint has a truncated state shard (rank 1's: rank 0 alone would load and
    wait for rank 1 forever), the one before lacks a data partition of rank 1: both are reported in one
    line each, the run resumes from the third and ends where the uninterrupted run did."""
    out, newest = _damaged_copy(tmp_path, reference, "damaged")
    _truncate(newest / "state" / "rank1.pt")
    os.remove(out / "checkpoints" / "step_000008" / "data" / "part0001.pt")
    log = run(out, "--checkpoint.keep", "3")
    warnings = [line for line in log.splitlines() if "is damaged" in line]
    assert len(warnings) == 2 and all("falling back to the previous checkpoint" in w for w in warnings), log[-3000:]
    assert "state/rank1.pt" in warnings[0] and "data/part0001.pt is missing" in warnings[1]
    assert "resumed from" in log and "step_000006" in log.split("resumed from")[1].splitlines()[0]
    assert_same_end(out, reference)  # steps 7 to 10 replayed from step 6: same end


@pytest.mark.parametrize("damage", ["truncated_model_shard", "half_deleted_with_complete", "flipped_byte",
                                    "missing_manifest"])
def test_verify_finds_damage(tmp_path, reference, damage):
    """The same validation, in one process, for the other kinds of damage."""
    from trainer.state import checkpoint

    out, newest = _damaged_copy(tmp_path, reference, damage)
    assert checkpoint.verify(str(newest)) is None
    model = newest / "state" / "rank0.pt"
    if damage == "truncated_model_shard":
        _truncate(model)
    elif damage == "half_deleted_with_complete":
        shutil.rmtree(newest / "state")
    elif damage == "flipped_byte":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    else:
        os.remove(newest / "MANIFEST.json")
    problem = checkpoint.verify(str(newest))
    assert problem, damage
    warnings = []
    chosen = checkpoint.select_valid(checkpoint.resume_candidates("auto", str(out)), warnings.append)
    assert chosen.endswith("step_000008") and len(warnings) == 1 and problem in warnings[0]


def test_nonfinite_steps_skipped_then_divergence_stops_the_run(tmp_path):
    """One non-finite step (3) is skipped and counted with no scheduler step; then three in a row
    (5, 6, 7) with train.max_skipped 3 stop the run with EXIT_DIVERGED, one line, no traceback,
    and no checkpoint at the divergence (6 was saved: its weights were still finite)."""
    from trainer.launch.exit_codes import EXIT_DIVERGED
    from trainer.state.reader import read_named_tensors

    out = tmp_path / "nan"
    log = run(out, "--train.steps", "10", "--train.warmup_steps", "6", "--checkpoint.every", "1",
              "--train.max_skipped", "3", env={"FAULT_NAN_STEPS": "3,5,6,7"}, expect=EXIT_DIVERGED)
    s = summaries(out)[0]
    assert s["skipped_steps"] == 4 and [h["skipped"] for h in s["history"]] == [False, False, True, False, True, True]
    lrs = [h["lr"] for h in s["history"]]
    assert lrs[2] == lrs[1] and lrs[3] > lrs[2]  # no scheduler step for the skipped step
    assert "step 3: non-finite loss" in log and "train.max_skipped" in log and "diverged" in log
    assert_no_abort(log)  # no traceback, no worker aborting at exit
    assert checkpoints(out)[-1] == "step_000006"  # nothing saved at the divergence (7)
    ema = read_named_tensors(str(out / "checkpoints" / "step_000006"), "ema")
    assert ema and all(bool(t.isfinite().all()) for t in ema.values())


def test_export_holds_the_ema_weights(reference):
    """export.weights auto with the EMA on: the exported tensors are the EMA assembled from the last
    checkpoint's per-rank shards by their recorded parameter ranges (``read_named_tensors``)."""
    import torch
    from safetensors.torch import load_file

    from trainer.state.reader import read_named_tensors

    out = reference[0]
    exported = load_file(os.path.join(out, "export", "model.safetensors"))
    full = read_named_tensors(os.path.join(out, "checkpoints", "step_000010"), "ema")
    assert set(full) == set(exported)
    for name, t in full.items():
        assert torch.equal(t, exported[name].float()), name
