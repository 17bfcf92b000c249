"""A checkpoint's manifest: every file's size and CRC-32, written when all ranks have finished
writing (``write_manifest``), and checked before a resume (``verify``, ``select_valid``); the
work is split across ranks. Collectives where a process group is up.

    >>> write_manifest(tmp)                         # every rank, after its files are written
    >>> path = select_valid(candidates, warn=print)  # every rank: the newest intact checkpoint
"""

from __future__ import annotations

import json
import os
import zlib

import torch.distributed as dist

from trainer.state import storage

OLD_FORMAT = ("saved in the format before elastic resume (accelerate/, data_rank*.pt), which this version "
              "cannot resume; start over with --checkpoint.resume null")


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(obj) -> list:
    rank, world = rank_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def write_manifest(path: str) -> None:
    """Every file under ``path`` with its size and CRC-32; the checksums are split across ranks
    (rank r reads files r, r+W, ...). Collective; rank 0 writes MANIFEST.json. A rank that cannot
    read its share still reaches the all-gather, and every rank raises its ``OSError``."""
    rank, world = rank_world()
    files = sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)
    mine, failure = {}, None
    try:
        mine = {f: [os.path.getsize(os.path.join(path, f)), _crc32(os.path.join(path, f))]
                for i, f in enumerate(files) if i % world == rank}
    except OSError as e:
        failure = storage.as_failure(e, path)
    parts = all_gather((mine, failure))
    if failed := next((f for _, f in parts if f is not None), None):
        raise OSError(failed["errno"], failed["strerror"], failed["path"])
    merged = {k: v for part, _ in parts for k, v in part.items()}
    if rank == 0:
        storage.naming(os.path.join(path, "MANIFEST.json"), _dump, os.path.join(path, "MANIFEST.json"), merged)


def verify(path: str) -> str | None:
    """What is wrong with checkpoint ``path`` as this rank sees it, or None. Sizes of every file,
    checksums of this rank's share of them (see ``write_manifest``)."""
    rank, world = rank_world()
    try:
        with open(os.path.join(path, "MANIFEST.json")) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable MANIFEST.json ({type(e).__name__})"
    if "state/rank0.pt" not in files:
        return OLD_FORMAT if any(n.startswith("accelerate/") for n in files) else "no state/rank0.pt in its manifest"
    for i, (name, (size, crc)) in enumerate(sorted(files.items())):
        full = os.path.join(path, name)
        if not os.path.isfile(full):
            return f"{name} is missing"
        if os.path.getsize(full) != size:
            return f"{name} has {os.path.getsize(full)} bytes, {size} were written"
        if i % world == rank and _crc32(full) != crc:
            return f"{name} fails its checksum"
    return None


def select_valid(candidates: list[str], warn) -> str | None:
    """The newest candidate that every rank finds intact (collective; same answer on every rank).
    Each damaged one is reported through ``warn`` in one line."""
    for path in candidates:
        problems = [p for p in all_gather(verify(path)) if p]
        if not problems:
            return path
        rest = "falling back to the previous checkpoint" if path != candidates[-1] else "no older checkpoint"
        warn(f"checkpoint {path} is damaged ({problems[0]}); {rest}")
    return None




def _dump(path: str, files: dict) -> None:
    with open(path, "w") as f:
        json.dump({"files": files}, f, indent=2, sort_keys=True)
