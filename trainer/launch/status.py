"""What the launcher, the quiet torchrun and the workers share: environment names, the status files
through which workers report their exit codes, the run's exit code, and the early SIGUSR1 hold.

The launcher (``launcher.py``) sets ``SCALEOUT_LAUNCHER_PID`` and ``SCALEOUT_STATUS_DIR`` for its
workers; a worker (``worker.py``) writes ``ready-<pid>`` once its signal handlers are in and
``rank<r>.json`` (its code and message) when it ends; ``run_code`` turns those into the run's code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import psutil

from trainer.launch.exit_codes import EXIT_DIVERGED, EXIT_IOERR, EXIT_OK, EXIT_REQUEUE, EXIT_USAGE

LAUNCHER_ENV = "SCALEOUT_LAUNCHER_PID"
STATUS_ENV = "SCALEOUT_STATUS_DIR"
GRACE_ENV = "SCALEOUT_ORPHAN_GRACE_S"
LOG_ENV = "SCALEOUT_LAUNCH_LOG"  # <out_dir>/logs/launcher-<time>.log: torchrun's report, crashed workers' tracebacks
FAILURES = "failures.json"  # the quiet torchrun's record of the workers it saw fail (``root_failure``)
DOCUMENTED_EXITS = (EXIT_USAGE, EXIT_IOERR, EXIT_DIVERGED, EXIT_REQUEUE)  # by priority: the run's code if ranks differ


def say(line: str) -> None:
    with contextlib.suppress(OSError):  # a closed terminal must not stop a save or the hard exit
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def write_record(path: str, record: dict) -> None:
    with open(path + ".tmp", "w") as f:  # a reader never sees half a record
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


_EARLY: list[int] = []


def hold_early_usr1() -> None:
    """First thing in ``scaleout train`` (launcher and workers): a SIGUSR1 that comes while Python
    imports torch and builds the run would kill the process (its default action), and a preemption
    warning (SLURM's ``--signal=USR1``, ``scancel --signal=USR1 --full``) at that moment would lose the
    requeue. Remember it instead; ``launch`` and ``StopSignal`` act on it once their handlers are in."""
    signal.signal(signal.SIGUSR1, lambda signum, frame: _EARLY.append(signum))


def early_usr1() -> bool:
    """Whether a SIGUSR1 came before the real handlers; consumed by the first caller."""
    seen = bool(_EARLY)
    _EARLY.clear()
    return seen


def read_statuses(status_dir: str) -> dict[int, dict]:
    out = {}
    for name in os.listdir(status_dir):
        if name.startswith("rank") and name.endswith(".json"):
            with open(os.path.join(status_dir, name)) as f:
                out[int(name[4:-5])] = json.load(f)
    return dict(sorted(out.items()))


def run_code(torchrun_code: int, statuses: dict[int, dict], announce: bool = False) -> int:
    """The run's exit code: the most serious code a worker recorded; torchrun's own when no worker
    recorded one (a crash: torchrun has printed its report)."""
    codes = {s["code"] for s in statuses.values()}
    for code in DOCUMENTED_EXITS:
        if code in codes:
            if announce:
                first = next(s for s in statuses.values() if s["code"] == code)
                if code == EXIT_USAGE:
                    say(f"scaleout train: error: {first['message']}")
                elif code == EXIT_REQUEUE:
                    say(f"scaleout train: preempted; checkpoint saved, exit {code}: requeue to resume")
            return code
    if torchrun_code != 0 or not statuses:
        return torchrun_code if torchrun_code > 0 else (128 - torchrun_code if torchrun_code < 0 else 1)
    return EXIT_OK


def append_log(text: str) -> str | None:
    """Append ``text`` to the launch log (``LOG_ENV``) in one write, so that ranks do not interleave;
    returns the log's path, or None when there is no launcher's log to write to."""
    path = os.environ.get(LOG_ENV)
    if not path:
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode("utf-8", "replace"))
    finally:
        os.close(fd)
    return path


def root_failure(failures: dict[int, dict], statuses: dict[int, dict]) -> tuple[int, str, int]:
    """The worker whose failure stopped the run, what happened to it, and the run's exit code.

    ``failures``: rank -> torchrun's record (exit code, negative for a signal; pid; the second it saw
    the failure; ``order``, the order it saw them in). The earliest second wins; within one second a
    signal from outside (a worker that left no record and was not stopped by torchrun's SIGTERM:
    SIGKILL from the kernel's OOM killer or a user, SIGSEGV) comes first, then the earliest recorded
    crash (a Python exception: its peers crash after it, on the lost connection), then torchrun's
    order. Exit code: 128 + the signal, or the worker's own."""
    def key(rank):
        record, exitcode = statuses.get(rank, {}), failures[rank]["exitcode"]
        outside = not record and exitcode < 0 and exitcode != -signal.SIGTERM
        kind = 0 if outside else 1 if record.get("crash") else 2
        return failures[rank]["time"], kind, record.get("time", 0), failures[rank]["order"]

    rank = min(failures, key=key)
    exitcode, record = failures[rank]["exitcode"], statuses.get(rank, {})
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return rank, f"killed by {name}", 128 - exitcode
    if record.get("crash"):
        return rank, f"crashed with {record['crash']}", exitcode
    return rank, f"exited with code {exitcode}", exitcode


def resume_command(argv: list[str]) -> str:
    """``scaleout train ...`` as this launcher was started (``argv``: ``sys.argv[1:]``), resuming from the
    run's latest checkpoint: a ``--checkpoint.resume`` on it is replaced by ``--checkpoint.resume auto``."""
    import shlex

    out, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--checkpoint.resume="):
            skip = False
            continue
        if arg == "--checkpoint.resume":
            skip = True
            continue
        out.append(arg)
    return shlex.join(["scaleout", *out, "--checkpoint.resume", "auto"])


def alive(proc: psutil.Process | None) -> bool:
    try:  # is_running() also checks the start time, so a reused pid does not count
        return proc is not None and proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None
