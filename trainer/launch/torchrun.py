"""The quiet torchrun: ``accelerate launch`` in this process, run by the launcher as
``python -m trainer.launch.torchrun ACCELERATE_ARGS...``.

It ignores SIGUSR1 (inherited by torchrun: SLURM's ``--signal`` without ``B:`` must not kill it;
the launcher forwards it to the workers) and gives no ``ChildFailedError`` report for the exits the
launcher reports itself (``status.DOCUMENTED_EXITS``): those are user errors, divergence and requeue.
For any other failure (a worker killed by a signal, a crash) it writes torchrun's report and its log
lines to the launch log (``status.LOG_ENV``, in ``train.out_dir``/logs) instead of the terminal, and
the failures to the status directory (``status.FAILURES``), from which the launcher says one line.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from trainer.launch.exit_codes import EXIT_OK
from trainer.launch.status import (
    DOCUMENTED_EXITS,
    FAILURES,
    LOG_ENV,
    STATUS_ENV,
    append_log,
    read_statuses,
    run_code,
    write_record,
)


class _DocumentedExits(logging.Filter):
    """Drops torchrun's "failed (exitcode: N)" line for the exits the launcher reports itself, and
    its "closing signal" lines for the peers it stops after a worker recorded such an exit."""

    def filter(self, record):
        args = record.args if isinstance(record.args, tuple) else ()
        if str(record.msg).startswith("failed (exitcode"):
            return not (args and args[0] in DOCUMENTED_EXITS)
        if "closing signal" in str(record.msg) and os.environ.get(STATUS_ENV):
            return not any(s["code"] in DOCUMENTED_EXITS for s in read_statuses(os.environ[STATUS_ENV]).values())
        return True


class _LaunchLog(logging.FileHandler):
    """torchrun's log lines, into the launch log; the file (and logs/) appear with the first line."""

    def _open(self):
        os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
        return super()._open()


def _report(error, status_dir: str) -> None:
    """An unexplained failure: torchrun's report into the launch log, the failures for the launcher."""
    append_log(error.format_msg() + "\n")
    failures = {str(rank): {"exitcode": f.exitcode, "pid": f.pid, "time": f.timestamp, "order": i}
                for i, (rank, f) in enumerate(error.failures.items())}
    write_record(os.path.join(status_dir, FAILURES), failures)


def main(argv: list[str]) -> int:
    """``accelerate launch`` in this process, without a traceback for documented worker exits."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited by torchrun: SLURM's USR1 must not kill it
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_DocumentedExits())
    status_dir, log = os.environ.get(STATUS_ENV), os.environ.get(LOG_ENV)
    if log and status_dir:  # the launcher says one line for a failure; the details go to its log
        elastic = logging.getLogger("torch.distributed.elastic")
        handler = _LaunchLog(log, delay=True)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        elastic.addHandler(handler)
        elastic.propagate = False
    try:
        launch_command(launch_command_parser().parse_args(argv))
    except (ChildFailedError, SignalException) as e:
        statuses = read_statuses(status_dir) if status_dir else {}
        failures = getattr(e, "failures", {})
        errored = any(s["code"] != EXIT_OK and not s.get("crash") for s in statuses.values())
        # A peer that torchrun stopped after a worker's documented exit died by SIGTERM (or SIGKILL);
        # any other signal (SIGABRT at interpreter exit, SIGSEGV) is a real failure, reported as such.
        stopped = (-signal.SIGTERM, -signal.SIGKILL)
        explained = statuses and all(
            (rank in statuses and not statuses[rank].get("crash") and statuses[rank]["code"] == f.exitcode)
            or (f.exitcode in stopped and errored)
            for rank, f in failures.items())
        if not explained:
            if not (log and status_dir and isinstance(e, ChildFailedError)):
                raise
            _report(e, status_dir)
            return 1
        return run_code(0, statuses)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
