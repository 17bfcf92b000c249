"""Checkpoints: the full training state, written so that a crash never leaves a half checkpoint.

Layout of ``<out_dir>/checkpoints/step_000123/``::

    accelerate/        accelerator.save_state: model, DeepSpeed ZeRO optimizer shards
                       (per-rank Muon momentum / Adam moments), LR scheduler, RNG states
    data_rank{r}.pt    each rank's loader position (stream state, token buffer, phase)
    trainer.json       step, tokens seen, best metrics
    meta.json          resolved config, model args, library versions
    model_config.json  the architecture (resume builds the model from this, not the recipe)
    tokenizer/         the tokenizer the run trains with
    COMPLETE           written last; a directory without it is ignored and removed

``save_state``/``load_state`` are collectives: every rank calls ``save``/``load``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from importlib import metadata

import torch

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


def resolve_resume(resume: str | None, out_dir: str) -> str | None:
    """'auto' -> latest complete checkpoint in out_dir (or None); a path must be a complete checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        ckpts = list_checkpoints(os.path.join(out_dir, "checkpoints"))
        return ckpts[-1] if ckpts else None
    if not os.path.exists(os.path.join(resume, "COMPLETE")):
        raise ConfigError(f"checkpoint.resume: '{resume}' is not a complete checkpoint directory "
                          "(no COMPLETE marker); pass a step_* directory, 'auto' or null")
    return resume


def save(accelerator, ckpt_root: str, step: int, *, loader, trainer_state: dict, meta: dict,
         model_config, tokenizer, keep: int) -> str:
    """Write checkpoint ``step`` on every rank; returns its path."""
    final = os.path.join(ckpt_root, f"step_{step:06d}")
    tmp = final + ".partial"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(os.path.join(tmp, "accelerate"))
    torch.save(loader.state_dict(), os.path.join(tmp, f"data_rank{accelerator.process_index}.pt"))
    if accelerator.is_main_process:
        _write_json(os.path.join(tmp, "trainer.json"), trainer_state)
        _write_json(os.path.join(tmp, "meta.json"), meta)
        model_config.to_json_file(os.path.join(tmp, "model_config.json"))
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(os.path.join(tmp, "COMPLETE"), "w") as f:
            f.write(f"{step}\n")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in list_checkpoints(ckpt_root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load(accelerator, path: str, *, loader) -> dict:
    """Restore model/optimizer/scheduler/RNG and this rank's loader; returns trainer.json."""
    accelerator.load_state(os.path.join(path, "accelerate"))
    data_file = os.path.join(path, f"data_rank{accelerator.process_index}.pt")
    if not os.path.exists(data_file):
        raise ValueError(f"checkpoint '{path}' has no loader state for rank {accelerator.process_index}; "
                         "resume with the same number of processes it was saved with")
    loader.load_state_dict(torch.load(data_file, weights_only=False))
    with open(os.path.join(path, "trainer.json")) as f:
        return json.load(f)


def read_meta(path: str) -> dict:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def _write_json(path: str, obj: dict) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
