"""The life of a run's processes: signals, parent death, one run per out_dir, exit codes.

torchrun (what ``accelerate launch`` runs) starts every worker in its own session, so a signal
sent to ``scaleout train`` or its process group never reaches the workers, and a dead launcher
leaves them training headless (DESIGN.md). The flow, launcher side (``launch``):

1. take ``RunLock(out_dir)`` (a live holder: one line, exit 2; a dead one: taken over, warned);
   in a multi-node run (one launcher per machine, scripts/slurm/train.sbatch) machine rank 0's only;
2. start torchrun in a new session (terminal Ctrl-C reaches only the launcher) through
   ``python -m trainer.lifecycle``, a quiet torchrun: SIGUSR1 ignored, so SLURM's ``--signal``
   without ``B:`` cannot kill it, and no ``ChildFailedError`` traceback for a documented exit;
3. forward SIGTERM/SIGINT/SIGUSR1 (SIGHUP as SIGTERM) to the workers, torchrun's children,
   once each has said it is ready; a second SIGTERM/SIGINT/SIGHUP kills the run (128 + signal);
4. wait until torchrun AND every worker are gone, then exit with the code the workers
   recorded in the status directory (``SCALEOUT_STATUS_DIR``).

Both sides hold SIGUSR1 from the first line of ``scaleout train`` (``hold_early_usr1``): a
preemption warning that comes while torch is imported is acted on once the handlers are in.

Worker side (``run_worker`` around ``trainer.loop.train``; ``worker_session`` in the loop):

1. ``StopSignal`` turns SIGTERM/SIGINT into "stop" and SIGUSR1 into "requeue"; ``agreed`` is one
   tiny all-reduce per step, so every rank ends at the same step with a checkpoint;
2. ``ParentWatch`` polls the launcher (``SCALEOUT_LAUNCHER_PID``) and torchrun (the parent): if
   either dies, even by SIGKILL, it requests a stop and hard-exits the worker after
   ``SCALEOUT_ORPHAN_GRACE_S`` seconds (default 20) without progress;
3. without a launcher, rank 0 takes ``RunLock`` and every rank learns the verdict (a broadcast);
4. user errors (``ValueError``, ``ConfigError``, ``FileNotFoundError``) become one line, exit 2.

Exit codes are in ``trainer/exit_codes.py``. With a launcher, a worker that stopped cleanly exits
0 to torchrun (so torchrun neither reports a failure nor kills its slower peers) and records its
real code (0, 3, 75) in its status file; an error exits 2 so that torchrun tears the peers down.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from trainer.exit_codes import EXIT_DIVERGED, EXIT_OK, EXIT_REQUEUE, EXIT_USAGE
from trainer.process_group import process_group_closed

LAUNCHER_ENV = "SCALEOUT_LAUNCHER_PID"
STATUS_ENV = "SCALEOUT_STATUS_DIR"
GRACE_ENV = "SCALEOUT_ORPHAN_GRACE_S"
_REASONS = (None, "stop", "requeue")  # all-reduced with MAX: requeue wins over stop
_PRIORITY = (EXIT_USAGE, EXIT_DIVERGED, EXIT_REQUEUE)  # the run's code when ranks disagree


def _say(line: str) -> None:
    with contextlib.suppress(OSError):  # a closed terminal must not stop a save or the hard exit
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _write(path: str, record: dict) -> None:
    with open(path + ".tmp", "w") as f:  # a reader never sees half a record
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


# ------------------------------------------------------------------------------- early SIGUSR1

_EARLY: list[int] = []


def hold_early_usr1() -> None:
    """First thing in ``scaleout train`` (launcher and workers): a SIGUSR1 that comes while Python
    imports torch and builds the run would kill the process (its default action), and a preemption
    warning (SLURM's ``--signal=USR1``, ``scancel --signal=USR1 --full``) at that moment would lose the
    requeue. Remember it instead; ``launch`` and ``StopSignal`` act on it once their handlers are in."""
    signal.signal(signal.SIGUSR1, lambda signum, frame: _EARLY.append(signum))


def _early_usr1() -> bool:
    """Whether a SIGUSR1 came before the real handlers; consumed by the first caller."""
    seen = bool(_EARLY)
    _EARLY.clear()
    return seen


# ---------------------------------------------------------------------------------------- workers

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
        if _early_usr1():
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

    @property
    def exit_code(self) -> int:
        return EXIT_REQUEUE if self.stopped == "requeue" else EXIT_OK

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        StopSignal._depth -= 1
        return False


def _alive(proc: psutil.Process | None) -> bool:
    try:  # is_running() also checks the start time, so a reused pid does not count
        return proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


class ParentWatch(threading.Thread):
    """A daemon thread: when the launcher or torchrun dies, stop at the next step boundary, and
    hard-exit if the step, the agreement or the save makes no progress for ``grace_s`` seconds
    (the deadline restarts once when the ranks agree to stop: the peers are alive and saving)."""

    def __init__(self, grace_s: float | None = None, poll_s: float = 0.5):
        super().__init__(daemon=True, name="scaleout-parent-watch")
        self.grace_s = float(os.environ.get(GRACE_ENV, 20)) if grace_s is None else grace_s
        self.poll_s = poll_s
        pid = os.environ.get(LAUNCHER_ENV)
        self.launcher = (int(pid), _process(int(pid))) if pid else None
        # Only torchrun is watched as a parent: a shell that ends must not stop a nohup'd run.
        self.ppid = os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None
        self.deadline, self._extended = None, False

    def gone(self) -> str | None:
        if self.launcher and not _alive(self.launcher[1]):
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
        _say(f"scaleout worker rank {_rank()}: {who} is gone; stopping at the next step boundary "
             f"(hard exit if that takes over {self.grace_s:g} s, {GRACE_ENV})")
        while time.monotonic() < self.deadline:
            time.sleep(self.poll_s)
        _say(f"scaleout worker rank {_rank()}: no progress for {self.grace_s:g} s after {who} died; exiting")
        os._exit(1)


def run_worker(train_fn) -> int:
    """The worker path of ``scaleout train``: ``train_fn()`` returns the run's exit code.

    Signals are handled from the start (one sent during the build stops the run at its first
    step), the parents are watched, a user error is one line instead of a traceback per rank, and
    the process group is gone before the worker exits, however ``train_fn`` ended
    (``trainer/process_group.py``: gloo may abort a process that exits with a live group)."""
    status_dir = os.environ.get(STATUS_ENV)
    message, quiet = None, False
    with StopSignal():
        watch = ParentWatch()
        if watch.launcher or watch.ppid is not None:  # a lone `scaleout train` process has no one to watch
            watch.start()
        if status_dir:  # the launcher forwards signals to a worker once its handlers are in place
            _write(os.path.join(status_dir, f"ready-{os.getpid()}"), {})
        try:
            with process_group_closed():
                code = train_fn()
        except (ValueError, FileNotFoundError) as e:  # ConfigError is a ValueError
            code, message = EXIT_USAGE, str(e)
            quiet = getattr(e, "same_on_every_rank", False) and _rank() != 0
    if status_dir:
        _write(os.path.join(status_dir, f"rank{_rank()}.json"), {"code": code, "message": message,
                                                                 "pid": os.getpid()})
        return EXIT_USAGE if message else EXIT_OK
    if message and not quiet:
        _say(f"scaleout train: error: {message}")
    return code


@contextlib.contextmanager
def worker_session(out_dir: str, device):
    """The loop's ``with``: the run lock when no launcher holds it (rank 0 takes it, every rank
    learns the verdict through one broadcast), then a ``StopSignal``."""
    lock = None
    if LAUNCHER_ENV not in os.environ:
        verdict = ""
        if _rank() == 0:
            try:
                lock = RunLock(out_dir)
                if warning := lock.acquire():
                    _say(f"scaleout train: warning: {warning}")
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


# ---------------------------------------------------------------------------------------- the lock

class RunLocked(ValueError):
    """``train.out_dir`` is held by a live run; the same on every rank."""

    same_on_every_rank = True


class RunLock:
    """One run per ``train.out_dir``: ``<out_dir>/.lock`` names the holder (host, pid, since) and
    an ``fcntl.flock`` on it says whether the holder lives (the kernel drops it when it dies).

        lock = RunLock("runs/tiny")
        warning = lock.acquire()   # RunLocked if a live run holds it; a warning for a dead one
        ...
        lock.release()             # empties the file: an empty unlocked file is a free out_dir

    The file is never deleted: removing it would let two runs lock two different files."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, ".lock")
        self.fd = None

    def acquire(self) -> str | None:
        os.makedirs(self.out_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunLocked(f"train.out_dir '{self.out_dir}' is in use by the run of {self._who(holder)}; "
                            "stop that run or choose another train.out_dir") from None
        previous = self._read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        if previous:
            return f"took over train.out_dir '{self.out_dir}' from a run that is gone ({self._who(previous)})"
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    @staticmethod
    def _read(fd) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {"host": "?", "pid": "?", "since": "?"}

    @staticmethod
    def _who(holder: dict) -> str:
        return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"


# ---------------------------------------------------------------------------------------- launcher

def launch(accelerate_args: list[str], out_dir: str, lock: bool = True) -> int:
    """``scaleout train --accelerate-config X``: lock, start torchrun, forward signals, wait for
    every worker, return the workers' exit code. See the module docstring for the flow.

    A multi-node run has one launcher per machine, each forwarding signals to its own workers and
    returning their code; only machine rank 0's takes the lock (``lock=False`` on the others)."""
    run_lock = RunLock(out_dir) if lock else None
    try:
        warning = run_lock.acquire() if run_lock else None
    except RunLocked as e:
        _say(f"scaleout train: error: {e}")
        return EXIT_USAGE
    if warning:
        _say(f"scaleout train: warning: {warning}")
    status_dir = tempfile.mkdtemp(prefix="scaleout-status-")
    received: list[int] = []
    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in forwarded}
    if _early_usr1():
        received.append(signal.SIGUSR1)
    try:
        env = dict(os.environ, **{LAUNCHER_ENV: str(os.getpid()), STATUS_ENV: status_dir})
        torchrun = subprocess.Popen([sys.executable, "-m", "trainer.lifecycle", *accelerate_args], env=env,
                                    start_new_session=True)
        killed_by = _supervise(torchrun, status_dir, received)
        if killed_by:
            _say(f"scaleout train: second {signal.Signals(killed_by).name}: killed the run without a checkpoint")
            return 128 + killed_by
        return _run_code(torchrun.returncode, _statuses(status_dir), announce=True)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if run_lock:
            run_lock.release()
        shutil.rmtree(status_dir, ignore_errors=True)


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
        if torchrun.poll() is not None and not any(_alive(p) for p in workers.values()):
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


def _statuses(status_dir: str) -> dict[int, dict]:
    out = {}
    for name in os.listdir(status_dir):
        if name.startswith("rank") and name.endswith(".json"):
            with open(os.path.join(status_dir, name)) as f:
                out[int(name[4:-5])] = json.load(f)
    return dict(sorted(out.items()))


def _run_code(torchrun_code: int, statuses: dict[int, dict], announce: bool = False) -> int:
    """The run's exit code: the most serious code a worker recorded; torchrun's own when no worker
    recorded one (a crash: torchrun has printed its report)."""
    codes = {s["code"] for s in statuses.values()}
    for code in _PRIORITY:
        if code in codes:
            if announce:
                first = next(s for s in statuses.values() if s["code"] == code)
                if code == EXIT_USAGE:
                    _say(f"scaleout train: error: {first['message']}")
                elif code == EXIT_REQUEUE:
                    _say(f"scaleout train: preempted; checkpoint saved, exit {code}: requeue to resume")
            return code
    if torchrun_code != 0 or not statuses:
        return torchrun_code if torchrun_code > 0 else (128 - torchrun_code if torchrun_code < 0 else 1)
    return EXIT_OK


# ------------------------------------------------------------------------------- the quiet torchrun

class _DocumentedExits(logging.Filter):
    """Drops torchrun's "failed (exitcode: N)" line for the exits the launcher reports itself, and
    its "closing signal" lines for the peers it stops after a worker recorded such an exit."""

    def filter(self, record):
        args = record.args if isinstance(record.args, tuple) else ()
        if str(record.msg).startswith("failed (exitcode"):
            return not (args and args[0] in _PRIORITY)
        if "closing signal" in str(record.msg) and os.environ.get(STATUS_ENV):
            return not any(s["code"] in _PRIORITY for s in _statuses(os.environ[STATUS_ENV]).values())
        return True


def _torchrun_main(argv: list[str]) -> int:
    """``accelerate launch`` in this process, without a traceback for documented worker exits."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by torchrun: SLURM's USR1 must not kill it
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_DocumentedExits())
    status_dir = os.environ.get(STATUS_ENV)
    try:
        launch_command(launch_command_parser().parse_args(argv))
    except (ChildFailedError, SignalException) as e:
        statuses = _statuses(status_dir) if status_dir else {}
        failures = getattr(e, "failures", {})
        errored = any(s["code"] != EXIT_OK for s in statuses.values())
        # A peer that torchrun stopped after a worker's documented exit died by SIGTERM (or SIGKILL);
        # any other signal (SIGABRT at interpreter exit, SIGSEGV) is a real failure, reported as such.
        stopped = (-signal.SIGTERM, -signal.SIGKILL)
        explained = statuses and all(
            (rank in statuses and statuses[rank]["code"] == f.exitcode) or (f.exitcode in stopped and errored)
            for rank, f in failures.items())
        if not explained:
            raise
        return _run_code(0, statuses)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(_torchrun_main(sys.argv[1:]))
