"""Small ``build_*`` steps that turn a Config into the run's parts (no training here)."""

from __future__ import annotations

import math
import os

from transformers import GraniteConfig

from models import build_model, granite_config, resolve_preset
from trainer.config import Config
from trainer.data.curriculum import parse_curriculum, parse_tokens


def build_arch(cfg: Config) -> dict:
    m = cfg.model
    return resolve_preset(m.preset, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
                          n_kv_heads=m.n_kv_heads, d_ff=m.d_ff, max_seq_len=m.max_seq_len,
                          tie_embeddings=m.tie_embeddings)


def build_model_config(cfg: Config, tokenizer, resume_dir: str | None = None) -> GraniteConfig:
    """The architecture: from the checkpoint when resuming (the recipe may have changed), else
    from the preset, the tokenizer's vocabulary and the muP multipliers."""
    if resume_dir is not None:
        return GraniteConfig.from_json_file(os.path.join(resume_dir, "model_config.json"))
    arch = build_arch(cfg)
    multipliers = {}
    if cfg.mup.enabled:
        from trainer.mup import mup_multipliers

        multipliers = mup_multipliers(arch, cfg.mup)
    return granite_config(arch, len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                          multipliers=multipliers)


def build_initialized_model(cfg: Config, model_config: GraniteConfig):
    model = build_model(model_config, seed=cfg.train.seed)
    if cfg.mup.enabled:
        from trainer.mup import apply_mup_init

        apply_mup_init(model, cfg.mup, seed=cfg.train.seed)
    return model


def total_steps(cfg: Config) -> int:
    """Run length in optimizer steps: train.steps, or train.tokens / train.tokens_per_step."""
    if cfg.train.steps is not None:
        return cfg.train.steps
    return math.ceil(parse_tokens(cfg.train.tokens) / cfg.train.tokens_per_step)


def final_seq_len(cfg: Config) -> int:
    """The curriculum's last (target) sequence length."""
    return parse_curriculum(cfg.data.curriculum)[-1].seq_len
