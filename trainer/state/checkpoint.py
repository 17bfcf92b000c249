"""Checkpoints: the full training state, layout-free, written so that a crash never leaves a half checkpoint.

Layout of ``<out_dir>/checkpoints/step_000123/``::

    state/rank{r}.pt     rank r's fragments (parameter name, element range) of the fp32 master
                         weights, optimizer state (Muon momentum, Adam moments, steps) and EMA
                         (``trainer/state/reshard.py``); read back at any world size and ZeRO stage
    state/rng_rank{r}.pt rank r's RNG states (restored only at the same world size)
    state/schedule.pt    the LR scheduler's state and the optimizer's group settings (lr, betas, ...)
    data/part{p}.pt      data partition p's position (stream state, token buffer) and the global
                         counters (tokens seen, steps, rows served); p < data.partitions
    trainer.json         step, tokens seen, health, the world size it was saved at
    meta.json            resolved config, model args, library versions
    model_config.json    the architecture (as pinned in out_dir/pinned/, trainer/state/pinned.py)
    tokenizer/           the tokenizer the run trains with (likewise pinned)
    MANIFEST.json        every file above with its size and CRC-32, written after all ranks finished
    COMPLETE             written last; a directory without it is ignored

What replaced ``accelerator.save_state``: it wrote DeepSpeed's own format (the module weights
once more and ZeRO optimizer partitions that refuse to load at another world size, and that
``ds_to_universal`` cannot convert for Muon), the scheduler and the RNG states. All of it is
here now: the module weights are rebuilt from the fp32 master fragments at load (one all-reduce;
under bf16 the cast DeepSpeed itself does), the scheduler and RNG are saved directly. Nothing
from DeepSpeed's checkpoint format is used, so no ``accelerator.load_state`` is needed; the
DeepSpeed engine's own step counters (logging only) start over at resume.

Reading a checkpoint offline, in one process (export, tests): ``trainer/state/reader.py``.

Crash safety: everything is written into ``step_N.partial`` and renamed when complete, so a kill
mid-save leaves no directory that resume would pick; old checkpoints lose their ``COMPLETE``
marker before they are deleted, so a kill mid-deletion leaves none either. Resume validates the
newest checkpoint against its manifest (``manifest.py``) on every rank (sizes everywhere, checksums
split across ranks), agrees collectively and falls back to the previous one with a one-line warning when it
is damaged (truncated shard, missing file, half-deleted directory). A write that fails (disk
full, I/O error, no permission) on any rank is agreed by every rank: the ``.partial`` directory is
removed, old checkpoints are deleted only after a new one is complete, and the run exits 74 with
one line (``trainer/state/storage.py``).

``save``/``load`` are collectives: every rank calls them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from importlib import metadata

import torch

from trainer.config.base import ConfigError
from trainer.launch.exit_codes import StorageError
from trainer.state import manifest, reshard, storage
from trainer.state.fragments import assemble
from trainer.state.manifest import OLD_FORMAT, select_valid, verify  # noqa: F401 -- the checkpoint's API

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


def shard_files(path: str) -> list[str]:
    """The ``state/rank{r}.pt`` files of checkpoint ``path``, by rank."""
    names = os.listdir(os.path.join(path, "state")) if os.path.isdir(os.path.join(path, "state")) else []
    ranks = sorted(int(m.group(1)) for n in names if (m := re.match(r"^rank(\d+)\.pt$", n)))
    return [os.path.join(path, "state", f"rank{r}.pt") for r in ranks]


def saved_world_size(path: str) -> int | None:
    """The number of processes checkpoint ``path`` was saved at (None: unreadable)."""
    try:
        return read_meta(path).get("world_size")
    except (OSError, ValueError):
        return None


def buffers_file(path: str) -> str:
    """The model buffers that training changes (deepseek_v3's expert biases), by name; absent when none."""
    return os.path.join(path, "state", "buffers.pt")


def _part_file(path: str, p: int) -> str:
    return os.path.join(path, "data", f"part{p:04d}.pt")


def _rng_state() -> dict:
    out = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def _set_rng_state(sd: dict) -> None:
    torch.set_rng_state(sd["torch"])
    random.setstate(sd["python"])
    if "cuda" in sd and torch.cuda.is_available():
        torch.cuda.set_rng_state(sd["cuda"])


def save(accelerator, ckpt_root: str, step: int, *, optimizer, fragments, shapes, scheduler, loader,
         trainer_state: dict, meta: dict, model_config, tokenizer, keep: int, ema=None,
         buffers: dict | None = None) -> str:
    """Write checkpoint ``step`` on every rank; returns its path. ``optimizer`` is the client torch
    optimizer, ``fragments`` what each of its held tensors covers (``trainer.state.ema.held_fragments``),
    ``buffers`` the model buffers training changes (``models.moe.trained_buffers``; rank 0 writes them).

    A failed write on any rank (disk full, I/O error, no permission) is agreed by every rank
    (``trainer/state/storage.py``): the partial directory is removed, the older checkpoints stay
    as they were, and every rank raises ``StorageError`` (exit 74) with one line naming the path,
    the cause, the space a checkpoint needs and what is free."""
    final = os.path.join(ckpt_root, f"step_{step:06d}")
    tmp = final + ".partial"
    failure = storage.attempt(_make_dirs, tmp, tmp) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    if failure is None:
        failure = storage.attempt(_write_files, tmp, accelerator, tmp, optimizer=optimizer, fragments=fragments,
                                  shapes=shapes, scheduler=scheduler, loader=loader, trainer_state=trainer_state,
                                  meta=meta, model_config=model_config, tokenizer=tokenizer, ema=ema,
                                  buffers=buffers or {})
    failure = storage.agree(failure)  # every rank learns of a failed write before the next collective
    if failure is None:
        failure = storage.agree(storage.attempt(_seal, tmp, accelerator, tmp, final, step))
    if failure is not None:
        _abandon(accelerator, ckpt_root, tmp, failure, step, optimizer, ema)
    if accelerator.is_main_process:
        for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:  # only once the new one is complete
            remove(old)
    accelerator.wait_for_everyone()
    return final


def _make_dirs(tmp: str) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("state", "data"):
        os.makedirs(os.path.join(tmp, sub))


def _write_files(accelerator, tmp: str, *, optimizer, fragments, shapes, scheduler, loader, trainer_state: dict,
                 meta: dict, model_config, tokenizer, ema, buffers: dict) -> None:
    """This rank's files of the checkpoint (see the module docstring); rank 0 also the shared ones."""
    rank = accelerator.process_index
    reshard.save_shard(os.path.join(tmp, "state", f"rank{rank}.pt"), optimizer, fragments, shapes, ema)
    storage.save_torch(_rng_state(), os.path.join(tmp, "state", f"rng_rank{rank}.pt"))
    data = loader.state_dict()
    counters = {k: v for k, v in data.items() if k != "parts"}
    for p, part in data["parts"].items():  # one file per partition: loadable at any world size
        storage.save_torch({**counters, "parts": {p: part}}, _part_file(tmp, p))
    if accelerator.is_main_process:
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        storage.save_torch({"scheduler": scheduler.state_dict(), "param_groups": groups},
                           os.path.join(tmp, "state", "schedule.pt"))
        if buffers:  # identical on every rank (computed from globally reduced numbers)
            storage.save_torch({n: b.detach().cpu().clone() for n, b in buffers.items()}, buffers_file(tmp))
        _write_json(os.path.join(tmp, "trainer.json"), trainer_state)
        _write_json(os.path.join(tmp, "meta.json"), meta)
        config_path, tokenizer_dir = os.path.join(tmp, "model_config.json"), os.path.join(tmp, "tokenizer")
        storage.naming(config_path, model_config.to_json_file, config_path)
        storage.naming(tokenizer_dir, tokenizer.save_pretrained, tokenizer_dir)


def _seal(accelerator, tmp: str, final: str, step: int) -> None:
    """The manifest (collective), then on rank 0 the COMPLETE marker and the rename into place."""
    manifest.write_manifest(tmp)
    if accelerator.is_main_process:
        storage.naming(os.path.join(tmp, "COMPLETE"), _write_text, os.path.join(tmp, "COMPLETE"), f"{step}\n")
        remove(final)
        os.replace(tmp, final)


def _abandon(accelerator, ckpt_root: str, tmp: str, failure: dict, step: int, optimizer, ema) -> None:
    """After an agreed failed write: remove the partial directory (rank 0) and raise ``StorageError``
    on every rank with the one line. The space a checkpoint needs is the newest complete one's size
    on disk, or what the ranks hold in memory (fp32 master weights, optimizer state, EMA)."""
    held = [p for g in optimizer.param_groups for p in g["params"]]
    held += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    mine = sum(t.numel() * t.element_size() for t in held) + (ema.nbytes() if ema is not None else 0)
    in_memory = sum(manifest.all_gather(mine))
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    done = list_checkpoints(ckpt_root)
    need = storage.tree_bytes(done[-1]) if done else in_memory
    newest = f"{os.path.basename(done[-1])} is the newest complete one" if done else "no complete checkpoint yet"
    raise StorageError(
        f"{failure['path']}: {storage.cause(failure)} while saving checkpoint step {step}; a checkpoint needs "
        f"~{storage.human_bytes(need)}, {storage.human_bytes(storage.free_bytes(ckpt_root))} is free in "
        f"{ckpt_root} (the partial {os.path.basename(tmp)} was removed, {newest}); free space or move "
        "train.out_dir (or lower checkpoint.keep), then run the same command to resume")


def remove(path: str) -> None:
    """Delete a checkpoint: the COMPLETE marker first, so a kill mid-deletion leaves nothing resumable."""
    marker = os.path.join(path, "COMPLETE")
    if os.path.exists(marker):
        os.remove(marker)
    shutil.rmtree(path, ignore_errors=True)


def load(accelerator, path: str, *, optimizer, fragments, model, scheduler, loader, ema=None,
         sharded: bool = False) -> dict:
    """Restore this rank's master weights, optimizer state and EMA (re-cut from the saved ranks'
    fragments), the model's weights and trained buffers, the scheduler, this rank's data partitions and (at the same
    world size) RNG; returns trainer.json. ``sharded``: the optimizer holds ZeRO partitions, so the
    module weights are assembled from every rank's (one all-reduce). Returns when every rank has loaded."""
    shards = reshard.open_shards(shard_files(path))
    reshard.load_shards(shards, optimizer, fragments, ema)
    if sharded:  # the module's weights are the master weights, as DeepSpeed casts them after a step
        held = [p for _, p in reshard.held_tensors(optimizer)]
        params = dict(model.named_parameters())
        full = assemble(held, fragments, shards[0]["shapes"], device=next(iter(params.values())).device)
        with torch.no_grad():
            for name, t in full.items():
                params[name].copy_(t)
    del shards
    if os.path.exists(buffers_file(path)):
        held_buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, t in torch.load(buffers_file(path), weights_only=True).items():
                held_buffers[name].copy_(t)
    schedule = torch.load(os.path.join(path, "state", "schedule.pt"), weights_only=False)
    scheduler.load_state_dict(schedule["scheduler"])
    for group, saved in zip(optimizer.param_groups, schedule["param_groups"]):  # lr, betas, ... as saved
        group.update(saved)
    mine = sorted(loader.state_dict()["parts"])  # the partitions this rank serves
    sd = None
    for p in mine:
        part = torch.load(_part_file(path, p), weights_only=True)
        sd = part if sd is None else {**sd, "parts": {**sd["parts"], **part["parts"]}}
    if sd is not None:
        loader.load_state_dict(sd)
    with open(os.path.join(path, "trainer.json")) as f:
        state = json.load(f)
    if saved_world_size(path) == accelerator.num_processes:
        _set_rng_state(torch.load(os.path.join(path, "state", f"rng_rank{accelerator.process_index}.pt"),
                                  weights_only=False))
    accelerator.wait_for_everyone()
    return state


def read_meta(path: str) -> dict:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def _write_json(path: str, obj: dict) -> None:
    storage.naming(path, _dump_json, path, obj)


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _dump_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
