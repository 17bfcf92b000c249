"""The quiet torchrun: ``accelerate launch`` in this process, run by the launcher as
``python -m trainer.launch.torchrun ACCELERATE_ARGS...``.

It ignores SIGUSR1 (inherited by torchrun: SLURM's ``--signal`` without ``B:`` must not kill it;
the launcher forwards it to the workers) and gives no ``ChildFailedError`` report for the exits the
launcher reports itself (``status.DOCUMENTED_EXITS``): those are user errors, divergence and requeue.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from trainer.launch.exit_codes import EXIT_OK
from trainer.launch.status import DOCUMENTED_EXITS, STATUS_ENV, read_statuses, run_code


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


def main(argv: list[str]) -> int:
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
        statuses = read_statuses(status_dir) if status_dir else {}
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
        return run_code(0, statuses)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
