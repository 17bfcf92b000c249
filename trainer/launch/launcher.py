"""The launcher side of ``scaleout train --accelerate-config X`` (the workers' side: ``worker.py``).

1. take ``RunLock(out_dir)`` (a live holder: one line, exit 2; a dead one: taken over, warned);
   in a multi-node run (one launcher per machine, scripts/slurm/train.sbatch) machine rank 0's only;
2. start torchrun in a new session (terminal Ctrl-C reaches only the launcher) through
   ``python -m trainer.launch.torchrun``, a quiet torchrun: SIGUSR1 ignored, so SLURM's ``--signal``
   without ``B:`` cannot kill it, and no ``ChildFailedError`` traceback for a documented exit;
3. forward SIGTERM/SIGINT/SIGUSR1 (SIGHUP as SIGTERM) to the workers, torchrun's children,
   once each has said it is ready; a second SIGTERM/SIGINT/SIGHUP kills the run (128 + signal);
4. wait until torchrun AND every worker are gone, then exit with the code the workers
   recorded in the status directory (``status.py``);
5. a worker that died otherwise (killed by a signal, a crash) is one line: its rank, the signal
   or exit code, the launch log ``<out_dir>/logs/launcher-<time>.log`` (torchrun's report, the
   crashed workers' tracebacks) and the command that resumes the run; the exit code is 128 + the
   signal (137 for SIGKILL) or the worker's own (1 for a Python exception).

Both sides hold SIGUSR1 from the first line of ``scaleout train`` (``hold_early_usr1``): a
preemption warning that comes while torch is imported is acted on once the handlers are in.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil

from trainer.launch.exit_codes import EXIT_USAGE
from trainer.launch.lock import RunLock, RunLocked
from trainer.launch.status import (
    DOCUMENTED_EXITS,
    FAILURES,
    LAUNCHER_ENV,
    LOG_ENV,
    STATUS_ENV,
    alive,
    early_usr1,
    read_statuses,
    resume_command,
    root_failure,
    run_code,
    say,
)


def launch(accelerate_args: list[str], out_dir: str, lock: bool = True) -> int:
    """``scaleout train --accelerate-config X``: lock, start torchrun, forward signals, wait for
    every worker, return the workers' exit code. See the module docstring for the flow.

    A multi-node run has one launcher per machine, each forwarding signals to its own workers and
    returning their code; only machine rank 0's takes the lock (``lock=False`` on the others)."""
    run_lock = RunLock(out_dir) if lock else None
    try:
        warning = run_lock.acquire() if run_lock else None
    except RunLocked as e:
        say(f"scaleout train: error: {e}")
        return EXIT_USAGE
    if warning:
        say(f"scaleout train: warning: {warning}")
    status_dir = tempfile.mkdtemp(prefix="scaleout-status-")
    received: list[int] = []
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in forwarded}
    if early_usr1():
        received.append(signal.SIGUSR1)
    try:
        log = os.path.join(out_dir, "logs", f"launcher-{time.strftime('%Y%m%d-%H%M%S')}.log")  # written on failure
        env = dict(os.environ, **{LAUNCHER_ENV: str(os.getpid()), STATUS_ENV: status_dir, LOG_ENV: log})
        torchrun = subprocess.Popen([sys.executable, "-m", "trainer.launch.torchrun", *accelerate_args], env=env,
                                    start_new_session=True)
        killed_by = _supervise(torchrun, status_dir, received)
        if killed_by:
            say(f"scaleout train: second {signal.Signals(killed_by).name}: killed the run without a checkpoint")
            return 128 + killed_by
        return _failed(status_dir, out_dir, log) or run_code(torchrun.returncode, read_statuses(status_dir),
                                                             announce=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if run_lock:
            run_lock.release()
        shutil.rmtree(status_dir, ignore_errors=True)


def _failed(status_dir: str, out_dir: str, log: str) -> int | None:
    """A worker died without a documented exit (the quiet torchrun recorded the failures): say which,
    how, where the details are and how to resume, in one line; the run's exit code. None otherwise."""
    path = os.path.join(status_dir, FAILURES)
    statuses = read_statuses(status_dir)
    if not os.path.exists(path) or any(s["code"] in DOCUMENTED_EXITS for s in statuses.values()):
        return None
    with open(path) as f:
        failures = {int(rank): failure for rank, failure in json.load(f).items()}
    rank, what, code = root_failure(failures, statuses)
    say(f"scaleout train: error: worker rank {rank} (pid {failures[rank]['pid']}): {what}; the run stopped with exit "
        f"{code} (torchrun's report and the workers' tracebacks: {log}); resume from the last checkpoint in "
        f"{out_dir}: {resume_command(sys.argv[1:])}")
    return code


def _supervise(torchrun: subprocess.Popen, status_dir: str, received: list[int]) -> int | None:
    """Forward signals until torchrun and every worker it started are gone. Returns the signal
    that escalated to a kill, or None."""
    workers: dict[int, psutil.Process] = {}
    pending: list[int] = []  # every forwarded signal, delivered to each worker once it is ready
    delivered: dict[int, int] = {}
    stops = 0
    while True:
        if torchrun.poll() is None:  # remember its children: they outlive it if it dies first
            with contextlib.suppress(psutil.NoSuchProcess):
                workers.update({p.pid: p for p in psutil.Process(torchrun.pid).children() if p.pid not in workers})
        while received:
            sig = received.pop(0)
            if sig != signal.SIGUSR1:
                stops += 1
                if stops > 1:
                    _kill_all(torchrun, workers)
                    return sig
            pending.append(signal.SIGTERM if sig == signal.SIGHUP else sig)
        for pid, proc in workers.items():
            if delivered.get(pid, 0) < len(pending) and os.path.exists(os.path.join(status_dir, f"ready-{pid}")):
                for sig in pending[delivered.get(pid, 0):]:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.send_signal(sig)
                delivered[pid] = len(pending)
        if torchrun.poll() is not None and not any(alive(p) for p in workers.values()):
            return None
        time.sleep(0.1)


def _kill_all(torchrun: subprocess.Popen, workers: dict[int, psutil.Process]) -> None:
    procs = list(workers.values())
    for p in list(procs):
        with contextlib.suppress(psutil.NoSuchProcess):
            procs += p.children(recursive=True)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(torchrun.pid, signal.SIGKILL)  # torchrun leads its own session
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    torchrun.wait()
    psutil.wait_procs(procs, timeout=10)
