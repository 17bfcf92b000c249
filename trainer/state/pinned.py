"""What defines a run, pinned in its run directory before the first step: the tokenizer files, the
resolved architecture and the config the run started with, plus a fingerprint of its data source.

Layout of ``<train.out_dir>/pinned/``::

    tokenizer/          the tokenizer the run trains with (save_pretrained output)
    model_config.json   the architecture (its transformers config class: model.type)
    pinned.json         {"config": the resolved config at the start, "source": the data fingerprint}

A resume reads the tokenizer and the architecture from here, never from the current ``data.*`` /
``model.*`` settings, so a run that died before its first checkpoint resumes with what it started
with. A run directory written before the pin existed (or a ``checkpoint.resume PATH`` from another
run) is pinned by its checkpoint, which holds the same three things (``checkpoint.py``). Which keys
a resume may change: ``trainer/config/resume.py``.

    >>> pin = read_pin("runs/tiny", candidates)     # None: a fresh run
    >>> tok, arch = pin.tokenizer(), pin.model_config()
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

PIN_DIR = "pinned"


@dataclass
class Pin:
    """A pinned run: ``path`` holds ``tokenizer/`` and ``model_config.json``; ``config`` the resolved
    config it started with; ``source`` the data fingerprint (None: not recorded)."""

    path: str
    config: dict
    source: dict | None

    def tokenizer(self):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(os.path.join(self.path, "tokenizer"), local_files_only=True)

    def model_config(self):
        from models import load_model_config

        return load_model_config(os.path.join(self.path, "model_config.json"))


def pin_dir(out_dir: str) -> str:
    return os.path.join(out_dir, PIN_DIR)


def read_pin(out_dir: str | None, candidates: list[str]) -> Pin | None:
    """The run directory's pin (``out_dir`` None: none), else the first checkpoint candidate whose
    files read; None when neither exists (a fresh run)."""
    path = pin_dir(out_dir) if out_dir else ""
    if path and os.path.isfile(os.path.join(path, "pinned.json")):
        with open(os.path.join(path, "pinned.json")) as f:
            saved = json.load(f)
        return Pin(path, saved["config"], saved.get("source"))
    for ckpt in candidates:
        try:
            with open(os.path.join(ckpt, "meta.json")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            continue  # a damaged newest checkpoint: the workers fall back past it too
        if os.path.isfile(os.path.join(ckpt, "model_config.json")) and os.path.isdir(os.path.join(ckpt, "tokenizer")):
            return Pin(ckpt, meta.get("config", {}), meta.get("source"))
    return None


def write_pin(out_dir: str, *, tokenizer, model_config, config: dict, source: dict | None) -> str:
    """Write ``out_dir/pinned/`` (rank 0 only, before the first step): into a temporary directory,
    then renamed, so a kill leaves the old pin or the new one, never half of one."""
    final = pin_dir(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".pinned-", dir=out_dir)
    try:
        tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
        model_config.to_json_file(os.path.join(tmp, "model_config.json"))
        with open(os.path.join(tmp, "pinned.json"), "w") as f:
            json.dump({"config": config, "source": source}, f, indent=2, sort_keys=True, default=str)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def update_source(out_dir: str, source: dict) -> None:
    """Record a changed data fingerprint (said once, by preflight) in ``out_dir/pinned/pinned.json``;
    one atomic rename, so the other ranks, reading the pin, never see half a file."""
    path = os.path.join(pin_dir(out_dir), "pinned.json")
    with open(path) as f:
        saved = json.load(f)
    with open(path + ".tmp", "w") as f:
        json.dump({**saved, "source": source}, f, indent=2, sort_keys=True, default=str)
    os.replace(path + ".tmp", path)


def source_change(old: dict | None, new: dict) -> str | None:
    """One phrase saying how the data source changed since it was pinned, or None."""
    if old is None or old == new:
        return None
    if "files" in old and "files" in new:
        return (f"{old['files']} file(s), {old['bytes']:,} bytes when pinned, {new['files']} file(s), "
                f"{new['bytes']:,} bytes now")
    return f"{old} when pinned, {new} now"
