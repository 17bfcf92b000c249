"""Every process that joined a process group leaves it before the interpreter exits.

torch 2.13's gloo can abort a process at interpreter exit (SIGABRT, "terminate called without an
active exception") when its process group is still alive: 2 of 8 bare 2-process ``torchrun`` runs
of one ``all_reduce`` (docs/design.md); measured again here, 1 of 12 pairs after one
``all_gather_object`` (0 of 12 after one ``all_reduce``), and 1 of 3 launches of the ZeRO-2 parity
worker; 0 with ``dist.destroy_process_group()`` before exit. An abort after a finished run turns it
into a failed one (a SLURM job marked failed, a CI run lost).
So every entry point that may start a group runs inside ``process_group_closed``: the trainer's
worker (``trainer.launch.worker.run_worker``), the bench scripts and the test workers.

    with process_group_closed():      # on return, exception or sys.exit alike
        main()

    sys.exit(run_main(main))          # the same, for a script's ``if __name__ == "__main__"``

Destroying an already destroyed (or never created) group is a no-op, so ``acc.end_training()``
inside the block is fine. A hard ``os._exit`` (the orphan watchdog) skips interpreter teardown and
cannot abort this way.
"""

from __future__ import annotations

import contextlib


def destroy_process_group() -> None:
    """Destroy the default process group (and every subgroup) if this process has one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group_closed():
    """Leave the block with no process group alive, whichever way it is left."""
    try:
        yield
    finally:
        destroy_process_group()


def run_main(main, *args, **kwargs):
    """``main(*args, **kwargs)`` inside ``process_group_closed``; returns what it returns."""
    with process_group_closed():
        return main(*args, **kwargs)
