"""Checkpoints: the full training state, written so that a crash never leaves a half checkpoint.

Layout of ``<out_dir>/checkpoints/step_000123/``::

    accelerate/        accelerator.save_state: model, DeepSpeed ZeRO optimizer shards
                       (per-rank Muon momentum / Adam moments), LR scheduler, RNG states
    data_rank{r}.pt    each rank's loader position (stream state, token buffer, phase)
    ema_rank{r}.pt     each rank's EMA slices with the parameter ranges they cover (ema.enabled)
    trainer.json       step, tokens seen, best metrics
    meta.json          resolved config, model args, library versions
    model_config.json  the architecture (resume builds the model from this, not the recipe)
    tokenizer/         the tokenizer the run trains with
    MANIFEST.json      every file above with its size and CRC-32, written after all ranks finished
    COMPLETE           written last; a directory without it is ignored

Crash safety: everything is written into ``step_N.partial`` and renamed when complete, so a kill
mid-save leaves no directory that resume would pick; old checkpoints lose their ``COMPLETE``
marker before they are deleted, so a kill mid-deletion leaves none either. Resume validates the
newest checkpoint against its manifest on every rank (sizes everywhere, checksums split across
ranks), agrees collectively and falls back to the previous one with a one-line warning when it
is damaged (truncated shard, missing file, half-deleted directory).

``save_state``/``load_state`` are collectives: every rank calls ``save``/``load``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zlib
from importlib import metadata

import torch
import torch.distributed as dist

from trainer.configlib import ConfigError

_STEP_DIR = re.compile(r"^step_(\d+)$")


def versions() -> dict:
    out = {}
    for pkg in ("scaleout", "torch", "accelerate", "deepspeed", "transformers", "datasets", "tokenizers"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def list_checkpoints(ckpt_root: str) -> list[str]:
    """Complete checkpoints under ``ckpt_root``, oldest first."""
    if not os.path.isdir(ckpt_root):
        return []
    found = []
    for name in os.listdir(ckpt_root):
        m = _STEP_DIR.match(name)
        path = os.path.join(ckpt_root, name)
        if m and os.path.exists(os.path.join(path, "COMPLETE")):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def resume_candidates(resume: str | None, out_dir: str) -> list[str]:
    """Checkpoints to try, newest first: 'auto' -> every complete one in out_dir/checkpoints; a path
    must be a complete checkpoint (it is the only candidate); None -> none."""
    if resume is None:
        return []
    if resume == "auto":
        return list_checkpoints(os.path.join(out_dir, "checkpoints"))[::-1]
    if not os.path.exists(os.path.join(resume, "COMPLETE")):
        raise ConfigError(f"checkpoint.resume: '{resume}' is not a complete checkpoint directory "
                          "(no COMPLETE marker); pass a step_* directory, 'auto' or null")
    return [resume]


def resolve_resume(resume: str | None, out_dir: str) -> str | None:
    """The newest candidate (before validation), or None."""
    found = resume_candidates(resume, out_dir)
    return found[0] if found else None


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_gather(obj) -> list:
    rank, world = _rank_world()
    if world == 1:
        return [obj]
    out: list = [None] * world
    dist.all_gather_object(out, obj)
    return out


def write_manifest(path: str) -> None:
    """Every file under ``path`` with its size and CRC-32; the checksums are split across ranks
    (rank r reads files r, r+W, ...). Collective; rank 0 writes MANIFEST.json."""
    rank, world = _rank_world()
    files = sorted(os.path.relpath(os.path.join(d, n), path) for d, _, names in os.walk(path) for n in names)
    mine = {f: [os.path.getsize(os.path.join(path, f)), _crc32(os.path.join(path, f))]
            for i, f in enumerate(files) if i % world == rank}
    merged = {k: v for part in _all_gather(mine) for k, v in part.items()}
    if rank == 0:
        _write_json(os.path.join(path, "MANIFEST.json"), {"files": merged})


def verify(path: str) -> str | None:
    """What is wrong with checkpoint ``path`` as this rank sees it, or None. Sizes of every file,
    checksums of this rank's share of them (see ``write_manifest``)."""
    rank, world = _rank_world()
    try:
        with open(os.path.join(path, "MANIFEST.json")) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable MANIFEST.json ({type(e).__name__})"
    if f"data_rank{rank}.pt" not in files:
        return f"no loader state for rank {rank}; it was saved at another number of processes"
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
        problems = [p for p in _all_gather(verify(path)) if p]
        if not problems:
            return path
        rest = "falling back to the previous checkpoint" if path != candidates[-1] else "no older checkpoint"
        warn(f"checkpoint {path} is damaged ({problems[0]}); {rest}")
    return None


def save(accelerator, ckpt_root: str, step: int, *, loader, trainer_state: dict, meta: dict,
         model_config, tokenizer, keep: int, ema=None) -> str:
    """Write checkpoint ``step`` on every rank; returns its path."""
    final = os.path.join(ckpt_root, f"step_{step:06d}")
    tmp = final + ".partial"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(os.path.join(tmp, "accelerate"))
    torch.save(loader.state_dict(), os.path.join(tmp, f"data_rank{accelerator.process_index}.pt"))
    if ema is not None:
        torch.save(ema.state_dict(), os.path.join(tmp, f"ema_rank{accelerator.process_index}.pt"))
    if accelerator.is_main_process:
        _write_json(os.path.join(tmp, "trainer.json"), trainer_state)
        _write_json(os.path.join(tmp, "meta.json"), meta)
        model_config.to_json_file(os.path.join(tmp, "model_config.json"))
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    accelerator.wait_for_everyone()
    write_manifest(tmp)
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            f.write(f"{step}\n")
        remove(final)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
            remove(old)
    accelerator.wait_for_everyone()
    return final


def remove(path: str) -> None:
    """Delete a checkpoint: the COMPLETE marker first, so a kill mid-deletion leaves nothing resumable."""
    marker = os.path.join(path, "COMPLETE")
    if os.path.exists(marker):
        os.remove(marker)
    shutil.rmtree(path, ignore_errors=True)


def load(accelerator, path: str, *, loader, ema=None) -> dict:
    """Restore model/optimizer/scheduler/RNG, this rank's loader and EMA; returns trainer.json.
    Returns only when every rank has loaded."""
    accelerator.load_state(os.path.join(path, "accelerate"))
    data_file = os.path.join(path, f"data_rank{accelerator.process_index}.pt")
    if not os.path.exists(data_file):
        raise ValueError(f"checkpoint '{path}' has no loader state for rank {accelerator.process_index}; "
                         "resume with the same number of processes it was saved with")
    loader.load_state_dict(torch.load(data_file, weights_only=False))
    if ema is not None:
        ema_file = os.path.join(path, f"ema_rank{accelerator.process_index}.pt")
        if os.path.exists(ema_file):
            ema.load_state_dict(torch.load(ema_file, weights_only=False))
        else:  # a checkpoint from a run without EMA: the EMA starts from the restored weights
            ema.initialized = False
    with open(os.path.join(path, "trainer.json")) as f:
        state = json.load(f)
    accelerator.wait_for_everyone()
    return state


def read_meta(path: str) -> dict:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
