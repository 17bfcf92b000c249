"""Faults injected into real training workers, for tests/test_reliability.py.

``tests/workers/sitecustomize/sitecustomize.py`` calls ``install()`` in every worker process
(``RANK`` set) when the test puts that folder on PYTHONPATH and sets a FAULT_* variable, so the
run goes through the real ``scaleout train`` launcher, ``accelerate launch`` and loop:

    FAULT_NAN_STEPS=3,4     the loss of the last rank is NaN at these optimizer steps (1-based, counted
                            in this invocation), so its gradients are too
    FAULT_OVERFLOW_STEPS=3  the gradient of the last rank's first parameter is inf at these optimizer steps
                            (the loss stays finite): an fp16 overflow for the loss scaler
    FAULT_PAUSE=POINT:STEP  rank 0 writes FAULT_MARK and sleeps at POINT of optimizer step STEP, so the
                            test can SIGKILL every process of the run exactly there:
                            mid_step     inside the optimizer step, after the first param group's update
                            mid_save     checkpoint files written, before the manifest and COMPLETE
                            after_save   right after the checkpoint of STEP is complete
                            mid_delete   half-way through deleting an old checkpoint, after the save of STEP
                            several pauses: POINT:STEP,POINT:STEP,...
    FAULT_ENOSPC=STEP       the last rank's writes into checkpoint STEP's ``.partial`` directory fail with
                            ENOSPC, as on a full disk (tests/test_storage.py, where no tmpfs can be mounted)
    FAULT_UNTIL_SIGNAL=1    a pause ends when rank 0 gets SIGTERM/SIGINT/SIGUSR1 (instead of lasting an
                            hour), so a signalled run stops at exactly the next step boundary
                            (tests/test_slurm.py)
"""

from __future__ import annotations

import errno
import os
import shutil
import time

from trainer.launch import worker
from trainer.optim.muon import ShardedMuon
from trainer.run import loop
from trainer.state import checkpoint, manifest, storage

RANK, WORLD = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
NAN_STEPS = {int(s) for s in os.environ.get("FAULT_NAN_STEPS", "").split(",") if s}
OVERFLOW_STEPS = {int(s) for s in os.environ.get("FAULT_OVERFLOW_STEPS", "").split(",") if s}
PAUSES = {(p, int(at)) for p, _, at in (x.partition(":") for x in os.environ.get("FAULT_PAUSE", "").split(",") if x)}
MID_DELETE = any(p == "mid_delete" for p, _ in PAUSES)
UNTIL_SIGNAL = os.environ.get("FAULT_UNTIL_SIGNAL") == "1"
ENOSPC_DIR = f"step_{int(os.environ['FAULT_ENOSPC']):06d}.partial" if os.environ.get("FAULT_ENOSPC") else None
step = {"n": 0}  # optimizer steps started in this invocation (+ the resumed step, set below)


def pause(point: str) -> None:
    if (point, step["n"]) in PAUSES and RANK == 0:
        with open(os.environ["FAULT_MARK"], "w") as f:
            f.write(f"{point}:{step['n']}\n")
        deadline = time.time() + 3600
        while time.time() < deadline and not (UNTIL_SIGNAL and worker.StopSignal.reason):
            time.sleep(0.05)


real_train_step = loop.train_step


def train_step(accelerator, model, *args, **kwargs):
    step["n"] += 1
    handle = None
    if step["n"] in NAN_STEPS and RANK == WORLD - 1:
        module = getattr(model, "module", model)

        def poison(mod, inputs, output):
            output.loss = output.loss * float("nan")
            return output
        handle = module.register_forward_hook(poison)
    if step["n"] in OVERFLOW_STEPS and RANK == WORLD - 1:
        import torch

        first = next(getattr(model, "module", model).parameters())
        handle = first.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    try:
        return real_train_step(accelerator, model, *args, **kwargs)
    finally:
        if handle is not None:
            handle.remove()


real_restore = loop.restore


def restore(run):
    state = real_restore(run)
    step["n"] = state["step"]
    return state


real_muon_step = ShardedMuon.step


def muon_step(self, closure=None):
    out = real_muon_step(self, closure)
    pause("mid_step")  # under ZeRO DeepSpeed calls step() once per group: later groups are not updated yet
    return out


real_manifest = manifest.write_manifest


def write_manifest(path):
    pause("mid_save")
    return real_manifest(path)


real_save = checkpoint.save


def save(*args, **kwargs):
    out = real_save(*args, **kwargs)
    pause("after_save")
    return out


real_rmtree = shutil.rmtree


def rmtree(path, *args, **kwargs):
    """Deleting an old checkpoint (its COMPLETE marker already gone): delete half of it, then pause."""
    name = os.path.basename(str(path).rstrip("/"))
    if MID_DELETE and name.startswith("step_") and not name.endswith(".partial") and os.path.isdir(path):
        files = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names)
        for f in files[: len(files) // 2]:
            os.remove(f)
        pause("mid_delete")
    return real_rmtree(path, *args, **kwargs)


real_save_torch = storage.save_torch


def save_torch(obj, path):
    if ENOSPC_DIR and RANK == WORLD - 1 and ENOSPC_DIR in str(path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return real_save_torch(obj, path)


def install() -> None:
    loop.train_step, loop.restore, ShardedMuon.step = train_step, restore, muon_step
    manifest.write_manifest, checkpoint.save, shutil.rmtree = write_manifest, save, rmtree
    storage.save_torch = save_torch
