"""How big one checkpoint will be, from the architecture alone, and whether ``train.out_dir`` has
room for the ones a run keeps: preflight refuses a run that would fill its disk at a later
checkpoint (``trainer/cli/preflight.py``). The run itself still catches a full disk at the write
(``trainer/state/storage.py``); this is the early, cheap warning.

What a checkpoint holds (``trainer/state/checkpoint.py``): fp32 master weights, the optimizer's
state (Muon: one momentum buffer for the hidden matrices; AdamW: two moments for the rest, or for
everything under ``optim.name: adamw``), the fp32 EMA when ``ema.enabled``, and small files
(tokenizer, data positions, configs, RNG). ZeRO shards all of it across ranks (one copy in total);
plain DDP saves it whole on every rank.

    >>> checkpoint_bytes(resolve_preset("tiny"), vocab_size=4096, muon=True, ema=True)
    20727808
"""

from __future__ import annotations

import os

from trainer.config.base import ConfigError
from trainer.state import storage
from trainer.state.checkpoint import list_checkpoints

FP32 = 4
SMALL_FILES = 2 << 20  # tokenizer, data positions, meta/trainer/model_config json, RNG: a few MB at most


def param_counts(arch: dict, vocab_size: int) -> tuple[int, int]:
    """(hidden-matrix parameters, the rest) of the Granite model ``models.granite_config`` builds:
    attention and MLP matrices are Muon's; embedding, an untied readout and the RMSNorm gains AdamW's."""
    d, layers, d_ff = arch["d_model"], arch["n_layers"], arch["d_ff"]
    kv = arch["n_kv_heads"] * (d // arch["n_heads"])
    matrices = layers * (2 * d * d + 2 * d * kv + 3 * d * d_ff)  # q, o; k, v; gate, up, down
    rest = vocab_size * d * (1 if arch["tie_embeddings"] else 2) + (2 * layers + 1) * d  # + norms
    return matrices, rest


def checkpoint_bytes(arch: dict, vocab_size: int, *, muon: bool, ema: bool, replicas: int = 1) -> int:
    """Bytes of one checkpoint: master weights + optimizer state + EMA (fp32) of every parameter,
    ``replicas`` times (the number of ranks under DDP, 1 under ZeRO), plus ``SMALL_FILES``."""
    matrices, rest = param_counts(arch, vocab_size)
    total = matrices + rest
    moments = matrices + 2 * rest if muon else 2 * total
    return FP32 * (total + moments + (total if ema else 0)) * replicas + SMALL_FILES


def check_checkpoint_space(cfg, arch: dict, world_size: int, vocab_size: int | None = None,
                           free: int | None = None) -> None:
    """ConfigError when ``train.out_dir`` (its nearest existing ancestor) has less free space than the
    checkpoints still to be written need: ``checkpoint.keep`` + 1 of them exist while a new one is
    written (the oldest is deleted only after), less the complete ones already there. ``vocab_size``:
    the tokenizer's when known (``init.from``), else ``data.vocab_size``; ``free``: the free bytes
    (tests), else the disk's."""
    vocab = vocab_size or (258 if cfg.data.tokenizer == "bytes" else cfg.data.vocab_size)
    vocab = -(-vocab // cfg.model.pad_vocab_multiple) * cfg.model.pad_vocab_multiple  # models.padded_vocab,
    # without importing transformers into the launcher
    replicas = 1 if cfg.dist.deepspeed_config else world_size
    each = checkpoint_bytes(arch, vocab, muon=cfg.optim.name == "muon", ema=cfg.ema.enabled, replicas=replicas)
    root = os.path.join(cfg.train.out_dir, "checkpoints")
    existing = len(list_checkpoints(root))
    count = max(1, cfg.checkpoint.keep + 1 - existing)
    free = storage.free_bytes(cfg.train.out_dir) if free is None else free
    if free >= count * each:
        return
    n = sum(param_counts(arch, vocab))
    raise ConfigError(
        f"train.out_dir: '{cfg.train.out_dir}' has {storage.human_bytes(free)} free, but {count} more "
        f"checkpoint{'s' if count != 1 else ''} of ~{storage.human_bytes(each)} ({n / 1e6:.1f}M parameters: fp32 "
        f"weights, optimizer state{', EMA' if cfg.ema.enabled else ''}; checkpoint.keep {cfg.checkpoint.keep} + 1 "
        f"while a new one is written, {existing} already there) need {storage.human_bytes(count * each)}; free "
        "space, point train.out_dir at a larger disk or lower checkpoint.keep")
