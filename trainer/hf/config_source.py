"""``model.config``: train any transformers causal LM from its ``config.json`` (a file, a folder holding
one, or a Hub id), built with ``AutoModelForCausalLM.from_config``: no weights are read.

The config brings the class and the architecture; ``model.preset`` and the ``model.*`` sizes do not
apply (setting one is refused). The vocabulary is the run's tokenizer's (padded to
``model.pad_vocab_multiple``), and its special-token ids are the tokenizer's. muP applies only to
classes whose config carries the forward multipliers (``models.MUP_TYPES``).

    >>> config = read_model_config("path/to/config.json")     # checks only: preflight and build_run
"""

from __future__ import annotations

import os

from trainer.config.base import ConfigError
from trainer.data.hub_ids import fetch, is_repo_id

SIZE_KEYS = ("preset", "type", "sliding_window", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
             "max_seq_len", "tie_embeddings")


def read_model_config(spec: str):
    """The causal-LM config ``spec`` names; one-line ``ConfigError`` for a missing file, a config
    transformers cannot read, or a class that is not a causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    what = f"model.config: '{spec}'"
    path = _resolve(spec, what)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as e:  # a file that is not a config, an unknown model_type, ...
        raise ConfigError(f"{what}: not a transformers config ({type(e).__name__}: {_first_line(e)}); give a "
                          "config.json (save_pretrained output)") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ConfigError(f"{what} is a {config.model_type!r} config, which has no causal-LM class in transformers; "
                          "give a decoder LM's config.json")
    config.use_cache = False
    return config


def check_model_keys(model_cfg) -> None:
    """``model.config`` sets the architecture: a preset or size set beside it is refused, naming it."""
    from trainer.config.sections import ModelConfig

    default = ModelConfig()
    for key in SIZE_KEYS:
        if getattr(model_cfg, key) != getattr(default, key):
            raise ConfigError(f"model.{key}: the architecture comes from model.config '{model_cfg.config}'; drop "
                              f"--model.{key} (or edit the config.json)")


def _resolve(spec: str, what: str) -> str:
    """A local file or folder as is; otherwise a Hub id, its config.json fetched (or found in the cache)."""
    path = os.path.expanduser(spec)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(f"{what} is a folder without config.json; give a config.json or its folder")
        return path
    if os.path.isfile(path):
        return path
    looks_like_id = not spec.startswith((".", "/", "~")) and not spec.endswith(".json") and spec.count("/") == 1
    if not (looks_like_id and is_repo_id(spec)):
        raise ConfigError(f"{what} not found; give a config.json, a folder holding one, or a Hub id (owner/name)")
    from huggingface_hub import hf_hub_download

    # online: the newest revision; offline, HF_HUB_OFFLINE=1 or the Hub out of reach: the cached one
    return fetch(f"{what} is not a local file", spec, "model", filename="config.json",
                 download=lambda local: hf_hub_download(spec, "config.json", local_files_only=local),
                 fix="give a config.json, a folder holding one, or a Hub id (owner/name)")


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:200]
