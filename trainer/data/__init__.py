"""Streaming data: sources, tokenizer, packing, the sequence-length curriculum, the resumable loader.

    >>> from trainer.data import build_tokenizer, TrainLoader, build_val_batches, validate_curriculum
    >>> tok = build_tokenizer(cfg.data)
    >>> loader = TrainLoader(cfg.data, tok, rank=r, world_size=W, tokens_per_step=cfg.train.tokens_per_step,
    ...                      grad_accum=cfg.train.grad_accum, max_seq_len=1024)
    >>> micro_batches = loader.next_step()

Names are imported lazily (PEP 562): ``import trainer.data.curriculum`` alone pulls in neither
``datasets`` nor ``transformers``. The settings are ``trainer.config.data.DataConfig``.
"""

import importlib

_EXPORTS = {
    "build_tokenizer": "tokenizer",
    "TrainLoader": "loader",
    "Prefetcher": "prefetch",
    "build_val_batches": "loader",
    "check_source": "preflight",
    "phase_at": "curriculum",
    "validate_curriculum": "curriculum",
    "micro_batch_size": "curriculum",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"trainer.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'trainer.data' has no attribute {name!r}")
