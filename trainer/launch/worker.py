"""The worker side of a run's life: signals, the parent-death watch, user errors as one line.

torchrun (what ``accelerate launch`` runs) starts every worker in its own session, so a signal
sent to ``scaleout train`` never reaches the workers and a dead launcher leaves them training
headless; the launcher (``launcher.py``) forwards signals, and each worker:

1. ``StopSignal`` turns SIGTERM/SIGINT into "stop" and SIGUSR1 into "requeue"; ``agreed`` is one
   tiny all-reduce per step, so every rank ends at the same step with a checkpoint;
2. ``ParentWatch`` polls the launcher (``SCALEOUT_LAUNCHER_PID``) and torchrun (the parent): if
   either dies, even by SIGKILL, it requests a stop and hard-exits the worker after
   ``SCALEOUT_ORPHAN_GRACE_S`` seconds (default 20) without progress;
3. without a launcher, rank 0 takes ``RunLock`` and every rank learns the verdict (a broadcast);
4. user errors (``ValueError``, ``ConfigError``, ``FileNotFoundError``) become one line, exit 2;
   a storage fault (``StorageError``: a checkpoint or export write failed, agreed by every rank)
   one line, exit 74.
   Any other exception under the launcher (a crash) writes its traceback to the launch log
   (``status.LOG_ENV``) and a record; the launcher says one line naming the first worker to fail.

With a launcher, a worker that stopped cleanly exits 0 to torchrun (so torchrun neither reports a
failure nor kills its slower peers) and records its real code (0, 3, 74, 75) in its status file
(``status.py``); an error exits 2 so that torchrun tears the peers down. A storage fault is said by
rank 0 itself (every rank agreed on it, so each exits 0 to torchrun and records 74).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback

from trainer.launch.exit_codes import EXIT_OK, EXIT_USAGE, StorageError
from trainer.launch.lock import RunLock, RunLocked
from trainer.launch.process_group import process_group_closed
from trainer.launch.status import (
    GRACE_ENV,
    LAUNCHER_ENV,
    LOG_ENV,
    STATUS_ENV,
    alive,
    append_log,
    early_usr1,
    process,
    rank,
    say,
    write_record,
)

_REASONS = (None, "stop", "requeue")  # all-reduced with MAX: requeue wins over stop


class StopSignal:
    """SIGTERM/SIGINT -> "stop", SIGUSR1 -> "requeue"; ``agreed`` makes every rank see the same.

        with StopSignal() as sig:
            while training:
                step()
                if reason := sig.agreed(device):   # collective: every rank, every step
                    save(); break

    The request is per process (signals are): entered again inside itself (``run_worker`` holds
    one from the start, the loop another), a signal that came during the build is kept."""

    _depth = 0
    reason: str | None = None  # the request seen by this process, set by handlers and ParentWatch
    _progress: list = []  # callbacks run when a stop is agreed (ParentWatch extends its deadline)

    def __enter__(self):
        if StopSignal._depth == 0:
            StopSignal.reason = None
        StopSignal._depth += 1
        self.stopped = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
        if early_usr1():
            self.request("requeue")
        return self

    @staticmethod
    def request(reason: str) -> None:
        if _REASONS.index(reason) > _REASONS.index(StopSignal.reason):
            StopSignal.reason = reason

    def _handle(self, signum, frame):
        self.request("requeue" if signum == signal.SIGUSR1 else "stop")

    @property
    def received(self) -> bool:
        return StopSignal.reason is not None

    def agreed(self, device) -> str | None:
        """None, "stop" or "requeue", the same on every rank; a collective (call it on all ranks)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([_REASONS.index(StopSignal.reason)], dtype=torch.int32, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stopped = _REASONS[int(flag.item())]
        if self.stopped:
            for callback in StopSignal._progress:
                callback()
        return self.stopped

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        StopSignal._depth -= 1
        return False


class ParentWatch(threading.Thread):
    """A daemon thread: when the launcher or torchrun dies, stop at the next step boundary, and
    hard-exit if the step, the agreement or the save makes no progress for ``grace_s`` seconds
    (the deadline restarts once when the ranks agree to stop: the peers are alive and saving)."""

    def __init__(self, grace_s: float | None = None, poll_s: float = 0.5):
        super().__init__(daemon=True, name="scaleout-parent-watch")
        self.grace_s = float(os.environ.get(GRACE_ENV, 20)) if grace_s is None else grace_s
        self.poll_s = poll_s
        pid = os.environ.get(LAUNCHER_ENV)
        self.launcher = (int(pid), process(int(pid))) if pid else None
        # Only torchrun is watched as a parent: a shell that ends must not stop a nohup'd run.
        self.ppid = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None
        self.deadline, self._extended = None, False

    def gone(self) -> str | None:
        if self.launcher and not alive(self.launcher[1]):
            return f"the scaleout train launcher (pid {self.launcher[0]})"
        if self.ppid is not None and os.getppid() != self.ppid:
            return f"its torchrun parent (pid {self.ppid})"
        return None

    def _extend_once(self):
        if self.deadline is not None and not self._extended:
            self._extended, self.deadline = True, time.monotonic() + self.grace_s

    def run(self):
        while (who := self.gone()) is None:
            time.sleep(self.poll_s)
        StopSignal.request("stop")
        self.deadline = time.monotonic() + self.grace_s
        StopSignal._progress.append(self._extend_once)
        say(f"scaleout worker rank {rank()}: {who} is gone; stopping at the next step boundary "
             f"(hard exit if that takes over {self.grace_s:g} s, {GRACE_ENV})")
        while time.monotonic() < self.deadline:
            time.sleep(self.poll_s)
        say(f"scaleout worker rank {rank()}: no progress for {self.grace_s:g} s after {who} died; exiting")
        os._exit(1)


def run_worker(train_fn) -> int:
    """The worker path of ``scaleout train``: ``train_fn()`` returns the run's exit code.

    Signals are handled from the start (one sent during the build stops the run at its first
    step), the parents are watched, a user error is one line instead of a traceback per rank, and
    the process group is gone before the worker exits, however ``train_fn`` ended
    (``trainer/launch/process_group.py``: gloo may abort a process that exits with a live group)."""
    status_dir = os.environ.get(STATUS_ENV)
    message, quiet, fault, crash = None, False, None, {}
    with StopSignal():
        watch = ParentWatch()
        if watch.launcher or watch.ppid is not None:  # a lone `scaleout train` process has no one to watch
            watch.start()
        if status_dir:  # the launcher forwards signals to a worker once its handlers are in place
            write_record(os.path.join(status_dir, f"ready-{os.getpid()}"), {})
        try:
            with process_group_closed():
                code = train_fn()
        except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
            code, message = EXIT_USAGE, str(e)
            quiet = getattr(e, "same_on_every_rank", False) and rank() != 0
        except StorageError as e:  # every rank raised it, with the same line
            code, fault = e.exit_code, str(e)
        except Exception:  # a crash: under our launcher, the traceback goes to its log and it says one line
            if not (status_dir and os.environ.get(LOG_ENV)):
                raise
            code, crash = 1, _log_crash()
    if fault and rank() == 0:
        say(f"scaleout train: error: {fault}")
    if status_dir:
        write_record(os.path.join(status_dir, f"rank{rank()}.json"), {"code": code, "message": message or fault,
                                                                 "pid": os.getpid(), **crash})
        return EXIT_USAGE if message else code if crash else EXIT_OK
    if message and not quiet:
        say(f"scaleout train: error: {message}")
    return code


def _log_crash() -> dict:
    """The current exception's traceback into the launch log (``status.LOG_ENV``); the record the
    launcher's one line is made of (``status.root_failure``): the exception and when it happened."""
    exc = sys.exc_info()[1]
    append_log(f"--- worker rank {rank()} (pid {os.getpid()}) crashed ---\n{traceback.format_exc()}")
    what = (f"{type(exc).__name__}: {exc}".splitlines() or [""])[0]
    return {"crash": what[:200] + ("..." if len(what) > 200 else ""), "time": time.time()}


@contextlib.contextmanager
def worker_session(out_dir: str, device):
    """The loop's ``with``: the run lock when no launcher holds it (rank 0 takes it, every rank
    learns the verdict through one broadcast), then a ``StopSignal``."""
    lock = None
    if LAUNCHER_ENV not in os.environ:
        verdict = ""
        if rank() == 0:
            try:
                lock = RunLock(out_dir)
                if warning := lock.acquire():
                    say(f"scaleout train: warning: {warning}")
            except RunLocked as e:
                lock, verdict = None, str(e)
        verdict = _broadcast(verdict, device)
        if verdict:
            raise RunLocked(verdict)
    try:
        with StopSignal() as stop:
            yield stop
    finally:
        if lock is not None:
            lock.release()


def _broadcast(text: str, device) -> str:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0, device=device)
    return box[0]
