"""Export: a checkpoint (or the live run) -> a plain transformers folder, in one process.

    scaleout export runs/tiny                          # newest intact checkpoint -> runs/tiny/exports/step_N_ema
    scaleout export runs/tiny/checkpoints/step_000100 --weights raw --out /tmp/tiny-raw

The folder (``write_export``, shared with the end-of-run export in ``trainer/run/loop.py``)::

    model.safetensors          the weights (a tied readout stored once, as save_pretrained does)
    config.json                the architecture, KV cache on
    generation_config.json     use_cache, bos/eos/pad ids
    tokenizer.json, tokenizer_config.json    model_max_length = the model's max positions
    README.md                  the model card (trainer/hf/model_card.py)

every file mode 0644, written into ``OUT.partial`` and renamed into place.

The weights come from the checkpoint reader (``trainer/state/reader.py``); the rest of the
checkpoint read here is ``meta.json``, ``trainer.json``, ``model_config.json`` and ``tokenizer/``.
No launcher, no DeepSpeed engine, no GPU: the files are read with ``torch.load`` (memory-mapped).
"""

from __future__ import annotations

import glob
import json
import os
import shutil

import torch

from trainer.config.base import ConfigError
from trainer.launch.exit_codes import StorageError
from trainer.state import checkpoint as ckpt
from trainer.state import storage
from trainer.state.reader import read_buffers, read_ema, read_named_tensors

WEIGHTS = ("auto", "ema", "raw")
FILE_MODE = 0o644


# -- checkpoint / run directory -------------------------------------------------------------------------
def is_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json")) and bool(
        glob.glob(os.path.join(path, "*.safetensors")) or glob.glob(os.path.join(path, "*.bin")))


def resolve_checkpoint(src: str, warn=None) -> str:
    """``src`` as a checkpoint directory: itself when it is an intact one, or a run directory's newest
    intact checkpoint (each damaged newer one is reported through ``warn``). One-line ``ConfigError``
    otherwise."""
    if not os.path.exists(src):
        raise ConfigError(f"'{src}' does not exist; pass a checkpoint (runs/NAME/checkpoints/step_N) or a run "
                          "directory (runs/NAME)")
    if not os.path.isdir(src):
        raise ConfigError(f"'{src}' is a file; pass a checkpoint directory or a run directory")
    if os.path.exists(os.path.join(src, "COMPLETE")) or os.path.exists(os.path.join(src, "MANIFEST.json")):
        candidates = [src]
        if not os.path.exists(os.path.join(src, "COMPLETE")):
            raise ConfigError(f"'{src}' is not a complete checkpoint (no COMPLETE marker: its save was interrupted); "
                              "pass the run directory to take its newest complete checkpoint")
    elif os.path.isdir(os.path.join(src, "checkpoints")):
        candidates = ckpt.list_checkpoints(os.path.join(src, "checkpoints"))[::-1]
        if not candidates:
            raise ConfigError(f"run directory '{src}' has no complete checkpoint under checkpoints/")
    elif is_export(src):
        raise ConfigError(f"'{src}' is already an exported model (config.json + weights), not a checkpoint")
    else:
        raise ConfigError(f"'{src}' is not a checkpoint, a run directory or an exported model; pass "
                          "runs/NAME or runs/NAME/checkpoints/step_N")
    problems = []
    for path in candidates:
        problem = ckpt.verify(path)
        if problem is None:
            for line in problems if warn is not None else []:
                warn(f"checkpoint {line}; took an older one")
            return path
        if path == src:
            raise ConfigError(f"checkpoint '{path}' is damaged ({problem}); pass its run directory to fall back "
                              "to an older one")
        problems.append(f"{os.path.basename(path)} is damaged: {problem}")
    raise ConfigError(f"run directory '{src}' has no intact checkpoint ({'; '.join(problems)}); "
                      "train again or restore the files")


def read_info(ckpt_dir: str) -> tuple[dict, dict]:
    """``meta.json`` (config, model args, versions) and ``trainer.json`` (step, tokens, losses)."""
    meta = ckpt.read_meta(ckpt_dir)
    with open(os.path.join(ckpt_dir, "trainer.json")) as f:
        return meta, json.load(f)


def _model_config(ckpt_dir: str):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(os.path.join(ckpt_dir, "model_config.json"))


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


# -- the folder -----------------------------------------------------------------------------------------
def write_export(out: str, state: dict[str, torch.Tensor], model_config, tokenizer, card: str) -> None:
    """Write the export folder (see the module docstring) from a full state dict; replaces ``out``.
    A failed write (disk full, I/O error, no permission) removes ``OUT.partial``, leaves ``out`` as it
    was and raises ``StorageError`` (exit 74) naming the path and the cause."""
    from transformers import GenerationConfig

    config = model_config.__class__.from_dict(model_config.to_dict())  # a copy: the run keeps its own
    config.use_cache = True
    model = _meta_model(config)
    state = _match_params(model, dict(state))
    model.config.dtype = next(iter(state.values())).dtype
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                               pad_token_id=config.pad_token_id, use_cache=True)
    tmp = out.rstrip("/") + ".partial"
    failure = storage.attempt(_write_folder, tmp, tmp, model, state, tokenizer, card)
    if failure is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(export_failure(failure, out))
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(tmp, out)


def export_failure(failure: dict, out: str) -> str:
    """The one line of a failed export write (``storage.attempt``'s failure)."""
    return (f"{failure['path']}: {storage.cause(failure)} while exporting to {out}; "
            f"{storage.human_bytes(storage.free_bytes(out))} is free there (the partial folder was removed, the "
            "checkpoints are intact); free space or choose another folder, then export again (scaleout export)")


def _write_folder(tmp: str, model, state: dict, tokenizer, card: str) -> None:
    """The export's files in ``tmp`` (mode 0644); consumes ``state``."""
    from huggingface_hub import ModelCard

    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    model.save_pretrained(tmp, state_dict=state, safe_serialization=True)  # consumes ``state``
    old = tokenizer.model_max_length
    tokenizer.model_max_length = model.config.max_position_embeddings
    for junk in ("is_local", "local_files_only"):  # loading details AutoTokenizer keeps, not the tokenizer's
        tokenizer.init_kwargs.pop(junk, None)
    try:
        tokenizer.save_pretrained(tmp)
    finally:
        tokenizer.model_max_length = old
    ModelCard(card).save(os.path.join(tmp, "README.md"))
    for d, _, names in os.walk(tmp):
        os.chmod(d, 0o755)
        for name in names:
            os.chmod(os.path.join(d, name), FILE_MODE)


def _match_params(model, state: dict) -> dict:
    """``state`` with a tied readout's alias dropped (DeepSpeed's module state holds it as a second
    entry); its keys must be exactly the model's."""
    first: dict = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            state.pop(name, None)
        first.setdefault(id(p), name)
    want = set(model.state_dict()) - (set(dict(model.named_parameters(remove_duplicate=False)))
                                      - set(first.values()))
    missing, extra = sorted(want - set(state)), sorted(set(state) - want)
    if missing or extra:
        raise ConfigError(f"the weights do not match model_config.json (missing {missing[:3]}, unexpected "
                          f"{extra[:3]}); the checkpoint is not from this architecture")
    return state


def count_params(model_config) -> tuple[int, int]:
    """(total, active per token) parameters of ``model_config``'s model (equal for a dense one)."""
    from models.builder import active_params
    from models.builder import count_params as count

    model = _meta_model(model_config)
    return count(model), active_params(model)


# -- scaleout export ------------------------------------------------------------------------------------
def export_checkpoint(src: str, out: str | None = None, weights: str = "auto", warn=None) -> str:
    """Export checkpoint (or run directory) ``src`` into ``out`` (default: ``default_out``); returns
    which weights were written, "ema" or "raw". ``out`` holding another export is an error."""
    return export_source(src, out, weights, warn)[0]


def export_source(src: str, out: str | None, weights: str, warn=None) -> tuple[str, str, str]:
    """``export_checkpoint``; returns (weights used, checkpoint read, folder written)."""
    from transformers import AutoTokenizer

    from trainer.hf.model_card import build_card

    if weights not in WEIGHTS:
        raise ConfigError(f"--weights must be auto, ema or raw, got {weights!r}")
    path = resolve_checkpoint(src, warn)
    meta, trainer_state = read_info(path)
    ema = read_ema(path) if weights in ("auto", "ema") else None
    if weights == "ema" and ema is None:
        raise ConfigError(f"checkpoint '{path}' has no EMA (ema.enabled was false, or ema.start_step not reached); "
                          "use --weights raw")
    used = "ema" if ema is not None else "raw"
    out = out or default_out(path, trainer_state["step"], used)
    _check_out(out, trainer_state["step"], used)
    state = {**read_named_tensors(path, "master", whole=True), **read_buffers(path)}
    if ema is not None:
        state = {**state, **{n: t.to(state[n].dtype) for n, t in ema.items()}}
    config = _model_config(path)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(path, "tokenizer"))
    total, active = count_params(config)
    card = build_card(meta, trainer_state, config, used, total, source=path, n_active=active)
    write_export(out, state, config, tokenizer, card)
    return used, path, out


def default_out(ckpt_dir: str, step: int, weights: str) -> str:
    """``<run dir>/exports/step_<N>_<weights>`` (beside ``checkpoints/``)."""
    run_dir = os.path.dirname(os.path.dirname(os.path.abspath(ckpt_dir)))
    return os.path.join(run_dir, "exports", f"step_{step:06d}_{weights}")


def _check_out(out: str, step: int, weights: str) -> None:
    """``out`` may be new, empty, or an earlier export of the same step and weights (replaced)."""
    if not os.path.exists(out):
        return
    if not os.path.isdir(out):
        raise ConfigError(f"--out '{out}' is a file; choose a directory")
    if not os.listdir(out):
        return
    from trainer.hf.model_card import card_origin

    origin = card_origin(out)
    if origin is None:
        raise ConfigError(f"--out '{out}' exists and is not an export; choose another --out or remove it")
    if (origin.get("step"), origin.get("weights")) != (step, weights):
        raise ConfigError(f"--out '{out}' holds the export of step {origin.get('step')} ({origin.get('weights')} "
                          f"weights), not step {step} ({weights}); choose another --out or remove it")


def quiet_libraries() -> None:
    """No progress bars, info lines or DeepSpeed's accelerator warning (transformers' save_pretrained
    imports it): a command's output is its own lines, an error is one line."""
    from transformers.utils import logging

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # what DeepSpeed picks anyway, minus its warning

    logging.disable_progress_bar()
    logging.set_verbosity_error()
