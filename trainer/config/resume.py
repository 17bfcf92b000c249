"""Which config keys a resumed run may change, and what each change does (README "What a resume may
change" is this table). Every key not listed here is pinned: it changes what a token or a parameter
means, or where the data and optimizer state stand, so a resume that changes it is refused.

A run's pinned settings are the config it started with (``trainer/state/pinned.py``: written into
``train.out_dir`` before the first step, and into every checkpoint's ``meta.json``).

    >>> pinned_conflicts({"data": {"vocab_size": 4096}}, {"data": {"vocab_size": 2048}})
    [('data.vocab_size', 4096, 2048)]
"""

from __future__ import annotations

# key, or "section." for every key of a section -> what changing it on resume does
RESUMABLE: dict[str, str] = {
    "optim.": "every optim.* key but optim.name: the new value applies from the next step (the resume line "
              "lists each change); Muon momentum and Adam moments are kept",
    "train.steps": "schedule length: the schedule is re-stretched from the current step (one line says how)",
    "train.tokens": "as train.steps (the run length in tokens)",
    "train.schedule": "the new schedule's value at the current step applies from the next step",
    "train.warmup_steps": "as train.schedule",
    "train.decay_frac": "as train.schedule",
    "train.min_lr_ratio": "as train.schedule",
    "train.grad_accum": "the same global batch in more or fewer micro-batches: batches and the loss are the "
                        "same, up to summation order",
    "train.grad_clip": "applies from the next step",
    "train.eval_every": "evaluation settings: apply from the next evaluation",
    "train.eval_batches": "as train.eval_every",
    "data.val_docs": "as train.eval_every (the validation set's size)",
    "train.stop_at_step": "this invocation's end",
    "train.max_skipped": "the run's health checks, from the next step",
    "train.spike_factor": "as train.max_skipped",
    "train.spike_steps": "as train.max_skipped",
    "train.activation_checkpointing": "memory and compute only: the same numbers",
    "train.compile": "speed only: the same numbers up to kernel rounding",
    "train.out_dir": "where the run lives (--checkpoint.resume PATH from another run directory pins the new one "
                     "to that checkpoint's settings)",
    "data.source": "said in one line when the source's files change (names or sizes): the pinned tokenizer "
                   "encodes the new documents, and each data partition continues from its saved position",
    "data.prefetch": "speed only: the same batches",
    "data.epochs": "where the loader stops",
    "dist.deepspeed_config": "ZeRO-1, ZeRO-2 or DDP/one process: checkpoints are layout-free, so each resumes "
                             "the other (as does another number of processes dividing data.partitions)",
    "ema.decay": "applies from the next EMA update; the average so far is kept",
    "ema.every": "as ema.decay",
    "ema.warmup": "as ema.decay",
    "checkpoint.": "every checkpoint.* key: how often and how many are kept, from now on",
    "export.": "every export.* key: the export at the end",
    "hub.": "every hub.* key: pushes from now on",
    "log.": "every log.* key: trackers and logging from now on (wandb keeps its run id)",
}

# The pinned keys whose change the refusal explains differently: the architecture and the tokenizer
# cannot be carried over (a new run directory starts fresh); the rest can, with init.from.
SHAPES = ("model.", "data.tokenizer", "data.vocab_size", "init.from", "mup.")

# Keys a resume changes freely because they say where to resume from, not what the run is.
NOT_COMPARED = ("checkpoint.resume",)


# Keys pinned although a section prefix above lists their section.
EXCEPT = ("optim.name",)


def is_resumable(key: str) -> bool:
    listed = (*RESUMABLE, *NOT_COMPARED)
    return key not in EXCEPT and any(key == k or (k.endswith(".") and key.startswith(k)) for k in listed)


def flat(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and tuples become lists (JSON round trips)."""
    out = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and key not in ("class_overrides",):
            out.update(flat(value, dotted + "."))
        else:
            out[dotted] = list(value) if isinstance(value, tuple) else value
    return out


def pinned_conflicts(pinned: dict, current: dict) -> list[tuple[str, object, object]]:
    """(key, pinned value, new value) for every pinned key whose value changed; a key the pinned
    config does not have (written by an older version) is not compared."""
    old, new = flat(pinned), flat(current)
    return [(k, old[k], v) for k, v in new.items() if k in old and old[k] != v and not is_resumable(k)]


def conflict_message(key: str, pinned, new, run: str, recipe: str, shown: str | None = None) -> str:
    """The one line for a refused change, with the command that makes it on purpose; ``shown`` says
    the pinned value better than its repr (a preset's value for an unset ``model.*`` key)."""
    fresh = any(key == k or (k.endswith(".") and key.startswith(k)) for k in SHAPES)
    if fresh:
        fix = (f"it defines the model or its tokens, so it cannot change in a run: drop the change, or start a new "
               f"run: scaleout train {recipe} --train.out_dir NEW_DIR")
    else:
        fix = (f"to change it on purpose, start a new run directory from the checkpoint (weights kept, optimizer "
               f"and data fresh): scaleout train {recipe} --init.from {run}/checkpoints/step_N --train.out_dir "
               "NEW_DIR")
    return (f"{key}: the run in '{run}' is pinned to {shown or repr(pinned)}, this command gives {new!r}; a resumed "
            f"run keeps what defines it; {fix}")
