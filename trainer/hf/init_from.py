"""``init.from``: start a run from a transformers model (a folder or a Hub id) or from a scaleout
checkpoint (its fp32 master weights, architecture and tokenizer) instead of a fresh init.

What the model brings and what the recipe keeps:

* weights, architecture and tokenizer come from the model: ``model.preset`` and ``data.tokenizer``
  are not used; a ``model.*`` size set explicitly must equal the model's (else one line naming it);
* the vocabulary keeps the model's size: ``model.pad_vocab_multiple`` does not apply, because new
  readout rows would add logits to every softmax and change the model's outputs;
* a granite_swa or qwen3 model trains as its own class (``model.type``); a Llama model becomes the
  Granite architecture the trainer uses (``models.convert``: multipliers
  1, the same logits); our own export is Granite already and carries its muP multipliers;
* muP (``mup.enabled``): the multipliers ``mup.*`` gives at the model's width must equal the ones in
  its config, else one line naming the ``mup.*`` keys and the values that would match. A Llama has
  no muP multipliers, so muP applies to it only with ``mup.base_width`` equal to its width;
* optimizer state, schedule and data start fresh at step 0; a run that has a checkpoint resumes
  from it instead (the checkpoint's weights, ``init.from`` supplies only the tokenizer).

A Hub id is resolved with ``huggingface_hub.snapshot_download``: the network when the Hub answers,
the local cache when not (or with ``HF_HUB_OFFLINE=1``); a missing repo or config.json, or a Hub out of
reach with nothing cached, is one line, not a traceback (``trainer.data.hub_ids``).
Only config, tokenizer and safetensors files are fetched (``HUB_FILES``: no pickled weights).

    >>> init = read_init(cfg)                 # checks only: preflight and build_run
    >>> tok = init.tokenizer()
    >>> model = init.load_model()             # GraniteForCausalLM, fp32, the model's weights
"""

from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass

from trainer.config.base import ConfigError
from trainer.data.hub_ids import fetch, is_repo_id

# model.* key -> the Granite config field it sets
MODEL_FIELDS = {"d_model": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                "n_kv_heads": "num_key_value_heads", "d_ff": "intermediate_size",
                "max_seq_len": "max_position_embeddings", "tie_embeddings": "tie_word_embeddings"}
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt"]  # config, weights, tokenizer; no pickles
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")


@dataclass
class InitModel:
    """A checked ``init.from``: where it is, what it was, and the Granite config the trainer builds."""

    spec: str  # what the user wrote
    path: str  # the local folder (a Hub id's cache snapshot)
    model_type: str  # granite or llama, as saved; "checkpoint" for a scaleout checkpoint directory
    config: object  # GraniteConfig, use_cache off for training

    @property
    def what(self) -> str:
        return f"init.from: '{self.spec}'"

    def tokenizer(self):
        from trainer.data.tokenizer import pretrained_tokenizer

        folder = os.path.join(self.path, "tokenizer") if self.model_type == "checkpoint" else self.path
        try:
            tok = pretrained_tokenizer(folder, self.what)
        except ConfigError:
            raise
        except Exception as e:  # transformers raises many kinds for a folder without tokenizer files
            raise ConfigError(f"{self.what} has no loadable tokenizer ({type(e).__name__}: {_first_line(e)}); "
                              "save one into the folder with tokenizer.save_pretrained") from None
        if len(tok) > self.config.vocab_size:
            raise ConfigError(f"{self.what}: its tokenizer has {len(tok)} tokens but the model only "
                              f"{self.config.vocab_size} embeddings; save the matching tokenizer with the model")
        return tok

    def load_model(self):
        """The model's weights in the class the trainer builds (``config``), fp32 on CPU; every parameter
        must load."""
        import torch
        from transformers import AutoModelForCausalLM

        if self.model_type == "checkpoint":
            return _checkpoint_model(self.path, self.config)
        model, info = AutoModelForCausalLM.from_pretrained(self.path, config=self.config, dtype=torch.float32,
                                                           output_loading_info=True)
        bad = {k: sorted(v)[:3] for k, v in info.items() if k != "error_msgs" and v}
        if bad or info.get("error_msgs"):
            raise ConfigError(f"{self.what}: its weights do not match its config.json ({bad or info['error_msgs']}); "
                              "re-save the model with save_pretrained")
        return model

    def describe(self, cfg) -> str:
        c = self.config
        conv = " converted to granite" if self.model_type == "llama" else ""
        mult = (f"multipliers embedding {c.embedding_multiplier:g} attention {c.attention_multiplier:.6g} residual "
                f"{c.residual_multiplier:g} logits_scaling {c.logits_scaling:g}" if hasattr(c, "logits_scaling")
                else "no muP multipliers")
        return (f"{self.what}: {self.model_type}{conv}, d_model {c.hidden_size}, {c.num_hidden_layers} layers, "
                f"vocab {c.vocab_size}, {mult}; its tokenizer replaces data.tokenizer '{cfg.data.tokenizer}'; "
                "optimizer state fresh")


def read_init(cfg) -> InitModel:
    """Resolve ``init.from`` and check it against ``cfg`` (model.* and mup.*); loads no weights."""
    from transformers import AutoConfig

    from models import MUP_TYPES, SUPPORTED_TYPES, trainer_config

    spec = cfg.init.from_
    path = resolve_path(spec)
    what = f"init.from: '{spec}'"
    if is_checkpoint(path):
        return _read_checkpoint(cfg, spec, path)
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{what}: cannot read config.json ({type(e).__name__}: {_first_line(e)}); point it at a "
                          "transformers model folder (save_pretrained output)") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if model_type not in SUPPORTED_TYPES:
        archs = ", ".join(raw.get("architectures") or []) if isinstance(raw, dict) else ""
        raise ConfigError(f"{what} is a {model_type!r} model{f' ({archs})' if archs else ''}; init.from takes "
                          f"the {' or '.join(SUPPORTED_TYPES)} architecture (config.json model_type)")
    try:
        config = trainer_config(AutoConfig.from_pretrained(path, local_files_only=True))
    except Exception as e:  # a config transformers rejects, or a Llama that Granite cannot express
        raise ConfigError(f"{what}: its config cannot be used ({type(e).__name__}: {_first_line(e)})") from None
    config.use_cache = False  # training; the export's generation_config turns the cache back on
    if not any(glob.glob(os.path.join(path, pattern)) for pattern in WEIGHT_FILES):
        raise ConfigError(f"{what} holds no weights (*.safetensors, or pytorch_model*.bin in a local folder); "
                          "save the model with save_pretrained")
    check_model_fields(cfg.model, config, what)
    if cfg.mup.enabled and config.model_type not in MUP_TYPES:
        raise ConfigError(f"mup.enabled: {what} is a {config.model_type} model, whose class has no muP multipliers; "
                          "set --mup.enabled false")
    check_mup(cfg.mup, config, model_type, what)
    return InitModel(spec, path, model_type, config)


def resolve_path(spec: str) -> str:
    """A local folder as is; otherwise a Hub id, fetched (or found in the cache) with huggingface_hub."""
    path = os.path.expanduser(spec)
    fix = ("give a transformers model folder (e.g. runs/NAME/export), a checkpoint (runs/NAME/checkpoints/step_N) "
           "or a Hub id (owner/name)")
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise ConfigError(f"init.from: '{spec}' is a file; {fix}")
        if not os.path.isfile(os.path.join(path, "config.json")) and not is_checkpoint(path):
            raise ConfigError(f"init.from: '{spec}' has no config.json, so it is not a transformers model folder; "
                              f"{fix}")
        return path
    if spec.startswith((".", "/", "~")) or not is_repo_id(spec):
        raise ConfigError(f"init.from: '{spec}' not found; {fix}")
    from huggingface_hub import hf_hub_download, snapshot_download

    def download(local: bool) -> str:
        hf_hub_download(spec, "config.json", local_files_only=local)  # a repo without one fails here, naming it
        return snapshot_download(spec, allow_patterns=HUB_FILES, local_files_only=local)

    # online: the newest revision; offline, HF_HUB_OFFLINE=1 or the Hub out of reach: the cached one
    return fetch(f"init.from: '{spec}' is not a local folder", spec, "model", filename="config.json", fix=fix,
                 download=download)


def check_model_fields(model_cfg, config, what: str) -> None:
    """An explicit ``model.*`` size must equal the model's; ``None`` (the default) takes the model's."""
    if model_cfg.type is not None and model_cfg.type != config.model_type:
        raise ConfigError(f"model.type: {model_cfg.type} conflicts with {what}, a {config.model_type} model (as "
                          f"the trainer builds it); drop --model.type or set it to {config.model_type}")
    for key, field in MODEL_FIELDS.items():
        value, have = getattr(model_cfg, key), getattr(config, field)
        if value is not None and value != have:
            raise ConfigError(f"model.{key}: {value} conflicts with {what}, whose {field} is {have}; the architecture "
                              f"comes from the model: drop --model.{key} or set it to {have}")


def check_mup(mup, config, model_type: str, what: str) -> None:
    """Under ``mup.enabled`` the multipliers ``mup.*`` gives at the model's width must be the model's."""
    if not mup.enabled:
        return  # the model's multipliers are kept as they are; learning rates are not width-scaled
    from models import arch_of
    from trainer.mup import mup_multipliers

    arch = arch_of(config)
    want = mup_multipliers(arch, mup)
    head_dim = arch["d_model"] // arch["n_heads"]
    match = {  # the mup.* setting that gives each multiplier, and the value that would give the model's
        "logits_scaling": ("mup.base_width", mup.base_width,
                           lambda v: f"{arch['d_model'] / (v * mup.output_alpha):g}"),
        "attention_multiplier": ("mup.attn_alpha", mup.attn_alpha, lambda v: f"{v * head_dim:.6g}"),
        "embedding_multiplier": ("mup.embedding_multiplier", mup.embedding_multiplier, lambda v: f"{v:g}"),
        "residual_multiplier": ("mup.residual_multiplier", mup.residual_multiplier, lambda v: f"{v:g}"),
    }
    wrong = []
    for name, (key, value, fix) in match.items():
        have = getattr(config, name)
        if not math.isclose(want[name], have, rel_tol=1e-6):
            wrong.append(f"{key} {value:g} gives {name} {want[name]:.6g} but the model has {have:.6g} "
                         f"({key} {fix(have)} would match)")
    if wrong:
        why = (f" (a Llama model has no muP multipliers: muP applies to it only at mup.base_width = its width "
               f"{arch['d_model']})" if model_type == "llama" else "")
        raise ConfigError(f"mup.*: muP cannot apply to {what}{why}: {'; '.join(wrong)}; set those mup.* values "
                          "or --mup.enabled false")


def is_checkpoint(path: str) -> bool:
    """A complete scaleout checkpoint directory (runs/NAME/checkpoints/step_N)."""
    return all(os.path.exists(os.path.join(path, name)) for name in ("COMPLETE", "model_config.json", "tokenizer"))


def _read_checkpoint(cfg, spec: str, path: str) -> InitModel:
    """``init.from`` a checkpoint: its architecture and tokenizer, and (``load_model``) its fp32 master
    weights; this is how a pinned setting changes on purpose (README "What a resume may change")."""
    from models import MUP_TYPES, load_model_config
    from trainer.state.checkpoint import shard_files

    what = f"init.from: '{spec}'"
    if not shard_files(path):
        raise ConfigError(f"{what} has no state/rank*.pt; give a checkpoint written by this version or its export")
    config = load_model_config(os.path.join(path, "model_config.json"))
    config.use_cache = False
    check_model_fields(cfg.model, config, what)
    if cfg.mup.enabled and config.model_type not in MUP_TYPES:
        raise ConfigError(f"mup.enabled: {what} is a {config.model_type} model, whose class has no muP multipliers; "
                          "set --mup.enabled false")
    check_mup(cfg.mup, config, config.model_type, what)
    return InitModel(spec, path, "checkpoint", config)


def _checkpoint_model(path: str, config):
    """A model of ``config``'s class holding checkpoint ``path``'s master weights (every parameter, fp32)
    and the buffers training changed (deepseek_v3's expert biases)."""
    import torch

    from models import build_model
    from trainer.state.reader import read_buffers, read_named_tensors

    model = build_model(config)
    weights = read_named_tensors(path, whole=True)
    params = dict(model.named_parameters())  # tied parameters once, as the checkpoint holds them
    if set(weights) != set(params):
        raise ConfigError(f"init.from: '{path}': its weights ({len(weights)} tensors) do not match its "
                          f"model_config.json ({len(params)} parameters)")
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, tensor in weights.items():
            params[name].copy_(tensor)
        for name, tensor in read_buffers(path).items():
            buffers[name].copy_(tensor)
    return model


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:200]
