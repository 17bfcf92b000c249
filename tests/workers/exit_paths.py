"""One rank of a 2-process gloo group (no model) that leaves by PATH through the trainer's own worker
wrapper, ``trainer.launch.worker.run_worker``: tests/test_exits.py starts it many times and checks that
no process aborts at exit (torch 2.13 + gloo may SIGABRT a process whose group is alive).

    RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=29512 python tests/workers/exit_paths.py usage

PATH (exit code): ok (0), usage (2: a ValueError, as bad input found in a worker), diverged (3),
requeue (75: SIGTERM to rank 0 and SIGUSR1 to rank 1; the ranks agree on requeue, which wins over
stop), signal (0: SIGTERM to rank 1 only; rank 0 learns it through the agreement), crash (1: an
unexpected exception, traceback). Every path first does the collectives the trainer
does: an all_reduce, an all_gather_object (checkpoint agreement) and a broadcast_object_list (the
run-lock verdict). The object collectives are what makes a live group abort: with the destroy
patched out, 1 of 12 pairs aborted after one all_gather_object, 0 of 12 after only an all_reduce.
(Forked ranks, cheaper to start, never aborted in 40 pairs without the destroy: each rank is a
fresh interpreter so that its teardown is a real worker's.)
"""

import os
import signal
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from trainer.launch import worker  # noqa: E402
from trainer.launch.exit_codes import EXIT_DIVERGED, EXIT_OK, EXIT_REQUEUE  # noqa: E402

EXPECTED = {"ok": 0, "usage": 2, "diverged": 3, "requeue": 75, "signal": 0, "crash": 1}


def by_signal(signum: int | None) -> int:
    """Send ``signum`` to this rank (None: no signal here) and agree with the peer, as the loop does
    every step; the code the loop gives the agreed reason."""
    with worker.StopSignal() as stop:
        if signum is not None:
            os.kill(os.getpid(), signum)
            deadline = time.monotonic() + 10
            while not stop.received and time.monotonic() < deadline:
                time.sleep(0.01)
        reason = stop.agreed("cpu")  # a collective: the unsignalled rank waits here for its peer
        assert reason is not None
        return EXIT_REQUEUE if reason == "requeue" else EXIT_OK


def train(path: str) -> int:
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    total = torch.ones(1)
    dist.all_reduce(total)
    seen = [None] * world
    dist.all_gather_object(seen, {"rank": rank})
    box = ["verdict" if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    assert total.item() == world and [s["rank"] for s in seen] == list(range(world)) and box == ["verdict"]
    if path == "usage":
        raise ValueError("data.source: a bad input found inside the worker")
    if path == "crash":
        raise RuntimeError("an unexpected error")
    if path == "requeue":
        return by_signal(signal.SIGTERM if rank == 0 else signal.SIGUSR1)
    if path == "signal":
        return by_signal(signal.SIGTERM if rank == 1 else None)
    return EXIT_DIVERGED if path == "diverged" else EXIT_OK


if __name__ == "__main__":
    sys.exit(worker.run_worker(lambda: train(sys.argv[1])))
