"""A run that survives signals (trainer/launch/): real launched 2-process CPU runs for the
signals, in-process tests for the lock, the stop agreement, the parent watch and the exit codes."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
from conftest import assert_no_abort  # tests/ is on sys.path

from trainer.launch import status, worker
from trainer.launch.exit_codes import EXIT_OK, EXIT_REQUEUE, EXIT_USAGE
from trainer.launch.lock import RunLock, RunLocked

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
TRAIN = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml",
         "--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml", "--data.curriculum", "64:inf",
         "--train.tokens_per_step", "2048", "--train.eval_every", "0", "--log.trackers", "[]",
         "--log.progress", "false", "--checkpoint.every", "0", "--train.steps", "100000"]


# ----------------------------------------------------------------------------- launched runs

def start(out_dir, env=None):
    """`scaleout train` in its own session (as from a terminal), its output in out_dir/../console.log."""
    log = open(os.path.join(os.path.dirname(out_dir), "console.log"), "w")
    return subprocess.Popen(TRAIN + ["--train.out_dir", str(out_dir)], cwd=ROOT, env=dict(ENV, **(env or {})),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def console(out_dir) -> str:
    return open(os.path.join(os.path.dirname(out_dir), "console.log")).read()


def wait_stepping(proc, out_dir, timeout=240):
    """Until the workers are in the loop (rank 0 prints the phase before step 1); the run's pids."""
    deadline = time.time() + timeout
    while "phase 0:" not in console(out_dir):
        assert proc.poll() is None and time.time() < deadline, console(out_dir)[-3000:]
        time.sleep(0.5)
    time.sleep(1)
    run = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
    assert len(run) >= 4, run  # launcher, torchrun, 2 workers
    return run


def alive(procs):
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


def finish(proc, run, out_dir, timeout=180):
    rc = proc.wait(timeout=timeout)
    t = time.time()
    while alive(run) and time.time() - t < 10:
        time.sleep(0.2)
    assert not alive(run), (alive(run), console(out_dir)[-3000:])
    return rc


def checkpoints(out_dir):
    return sorted(glob.glob(os.path.join(out_dir, "checkpoints", "step_*", "COMPLETE")))


@pytest.mark.slow
def test_sigterm_to_launcher_saves_and_exits_0_and_the_lock_refuses_a_second_run(tmp_path):
    out = tmp_path / "out"
    proc = start(out)
    run = wait_stepping(proc, out)
    second = subprocess.run(TRAIN + ["--train.out_dir", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                            timeout=120)
    lines = second.stderr.strip().splitlines()
    assert second.returncode == EXIT_USAGE and len(lines) == 1, second.stderr
    assert f"pid {proc.pid}" in lines[0] and "in use" in lines[0] and "Traceback" not in second.stdout
    t = time.time()
    proc.send_signal(signal.SIGTERM)
    rc = finish(proc, run, out)
    print(f"SIGTERM: every process gone {time.time() - t:.1f} s after the signal")
    assert rc == EXIT_OK, console(out)[-3000:]
    assert checkpoints(out), console(out)[-3000:]
    assert_no_abort(console(out))  # a stop by signal: no traceback, no worker aborting at exit
    assert json.loads(open(out / ".lock").read() or "{}") == {}  # released


@pytest.mark.slow
def test_sigusr1_to_launcher_saves_and_exits_75(tmp_path):
    """SIGUSR1 to the launcher alone: it forwards it, the run saves and exits 75. Also: a stale lock
    (its holder is gone) is taken over with a one-line warning. (SIGUSR1 to every process, SLURM's
    --signal without B:, is tests/test_slurm.py's `scancel --signal=USR1 --full` round.)"""
    out = tmp_path / "out"
    os.makedirs(out)
    (out / ".lock").write_text(json.dumps({"host": "gone-host", "pid": 999999, "since": "yesterday"}))
    proc = start(out)
    run = wait_stepping(proc, out)
    assert "warning: took over train.out_dir" in console(out) and "gone-host" in console(out)
    proc.send_signal(signal.SIGUSR1)
    rc = finish(proc, run, out)
    assert rc == EXIT_REQUEUE, console(out)[-3000:]
    assert checkpoints(out)
    assert_no_abort(console(out))  # no traceback, no ChildFailedError, no worker aborting at exit


@pytest.mark.slow
def test_sigkill_to_launcher_leaves_no_worker(tmp_path):
    out = tmp_path / "out"
    proc = start(out)
    run = wait_stepping(proc, out)
    t = time.time()
    proc.kill()
    proc.wait()
    # The workers notice within a second, finish the step, save and exit (a hard exit 20 s after
    # noticing, SCALEOUT_ORPHAN_GRACE_S); torchrun's agent then sees them gone and exits. On a loaded
    # 2-core CI machine the save alone has taken ~25 s, so the bound is generous: it asks that nothing
    # is left running, not how fast.
    while alive(run) and time.time() - t < 90:
        time.sleep(0.2)
    print(f"SIGKILL to launcher: every process gone {time.time() - t:.1f} s after the signal")
    assert not alive(run), (alive(run), console(out)[-3000:])
    assert "launcher" in console(out) and "is gone" in console(out)
    assert checkpoints(out)  # the workers stopped at a step boundary with a checkpoint


# ----------------------------------------------------------------------------- in-process

def test_stop_signal_reasons_in_one_process_requeue_wins():
    """The reasons a process's signals give; that 2 ranks agree on them (a signal to one rank stops
    both, requeue wins over stop) is tests/test_exits.py's requeue and signal paths."""
    with worker.StopSignal() as sig:
        assert sig.agreed("cpu") is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert sig.agreed("cpu") == "stop"
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGINT)
        assert sig.agreed("cpu") == "requeue"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_usr1_before_the_handlers_is_kept_not_fatal():
    """`scaleout train` holds SIGUSR1 from its first line: a preemption warning while torch imports
    becomes a requeue request once StopSignal (a worker) or launch() (the launcher) is in place."""
    old = signal.getsignal(signal.SIGUSR1)
    try:
        status.hold_early_usr1()
        os.kill(os.getpid(), signal.SIGUSR1)
        with worker.StopSignal() as sig:
            assert sig.agreed("cpu") == "requeue"
        with worker.StopSignal() as sig:  # consumed once
            assert sig.agreed("cpu") is None
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_run_lock_live_holder_and_stale_file(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from trainer.launch.lock import RunLock; "
                               f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)"],
                              cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked, match=f"pid {holder.pid}, since "):
            RunLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock(str(tmp_path))  # the holder died by SIGKILL: its file stays, its flock does not
    warning = lock.acquire()
    assert "took over" in warning and f"pid {holder.pid}" in warning
    lock.release()
    assert RunLock(str(tmp_path)).acquire() is None  # a released lock is free, no warning


def test_parent_watch_hard_exits_a_stuck_orphan(tmp_path):
    """The launcher dies while the worker is stuck (a collective that never completes)."""
    fake_launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    orphan = subprocess.Popen(
        [sys.executable, "-c", "import time; from trainer.launch.worker import ParentWatch; "
         "ParentWatch(poll_s=0.1).start(); time.sleep(60)"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
        env=dict(ENV, SCALEOUT_LAUNCHER_PID=str(fake_launcher.pid), SCALEOUT_ORPHAN_GRACE_S="2"))
    time.sleep(2)
    t = time.time()
    fake_launcher.kill()  # left a zombie on purpose: the watch must not take it for alive
    assert orphan.wait(timeout=20) == 1
    assert 1.5 < time.time() - t < 8
    assert "launcher (pid" in orphan.stderr.read()
    fake_launcher.wait()


def test_worker_errors_are_one_line_and_reported_to_the_launcher(tmp_path, capsys, monkeypatch):
    from trainer.config.base import ConfigError

    def bad():
        raise ConfigError("data.source: 'nope/nothing' cannot be reached; check the name")

    monkeypatch.delenv(status.STATUS_ENV, raising=False)
    assert worker.run_worker(bad) == EXIT_USAGE
    assert capsys.readouterr().err == "scaleout train: error: data.source: 'nope/nothing' cannot be reached; " \
                                      "check the name\n"
    monkeypatch.setenv(status.STATUS_ENV, str(tmp_path))
    assert worker.run_worker(bad) == EXIT_USAGE and capsys.readouterr().err == ""
    assert worker.run_worker(lambda: EXIT_REQUEUE) == EXIT_OK  # torchrun must see no failure
    statuses = status.read_statuses(str(tmp_path))
    assert statuses[0]["code"] == EXIT_REQUEUE
    assert status.run_code(0, {0: statuses[0], 1: {"code": EXIT_USAGE, "message": "m"}}) == EXIT_USAGE
    assert status.run_code(0, {0: statuses[0], 1: statuses[0]}) == EXIT_REQUEUE
    assert status.run_code(1, {}) == 1 and status.run_code(-9, {}) == 137
