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

from trainer.launch.exit_codes import EXIT_DIVERGED, EXIT_OK, EXIT_REQUEUE, EXIT_USAGE

LAUNCHER_ENV = "SCALEOUT_LAUNCHER_PID"
STATUS_ENV = "SCALEOUT_STATUS_DIR"
GRACE_ENV = "SCALEOUT_ORPHAN_GRACE_S"
DOCUMENTED_EXITS = (EXIT_USAGE, EXIT_DIVERGED, EXIT_REQUEUE)  # by priority: the run's code when ranks disagree


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
