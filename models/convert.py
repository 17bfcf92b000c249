"""Read a transformers causal-LM config as the Granite architecture the trainer builds.

Granite is Llama plus four forward multipliers, and the two share parameter names, so a Llama
checkpoint is a Granite checkpoint whose multipliers are 1 (embedding, residual, logits) and
whose attention scale is Llama's ``head_dim ** -0.5``: ``GraniteForCausalLM.from_pretrained``
loads its weights unchanged and computes the same logits. Nothing here knows about training.

    >>> granite = as_granite_config(AutoConfig.from_pretrained("path/to/llama"))
    >>> model = GraniteForCausalLM.from_pretrained("path/to/llama", config=granite)
"""

from __future__ import annotations

from transformers import GraniteConfig, PretrainedConfig

SUPPORTED_TYPES = ("granite", "llama", "granite_swa", "qwen3", "granitemoe", "granitemoe_swa", "qwen3_moe",
                   "deepseek_v3")
_OWN_CLASS = ("granite_swa", "qwen3", "granitemoe", "granitemoe_swa", "qwen3_moe",
                   "deepseek_v3")  # trained as they are (models.TYPES)

# Llama fields that mean the same in Granite (everything but the multipliers and head_dim).
_SHARED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps",
           "tie_word_embeddings", "rope_parameters", "attention_bias", "attention_dropout", "mlp_bias",
           "bos_token_id", "eos_token_id", "pad_token_id")


def trainer_config(config: PretrainedConfig) -> PretrainedConfig:
    """The config the trainer builds for a model folder's ``config``: granite_swa and qwen3 as they are
    (``model.type``), Granite and Llama as Granite (``as_granite_config``)."""
    if config.model_type in _OWN_CLASS:
        return config.__class__.from_dict(config.to_dict())
    return as_granite_config(config)


def as_granite_config(config: PretrainedConfig) -> GraniteConfig:
    """A GraniteConfig computing what ``config`` computes; ValueError for what Granite cannot express."""
    if config.model_type == "granite":
        return GraniteConfig.from_dict(config.to_dict())
    if config.model_type != "llama":
        raise ValueError(f"model_type {config.model_type!r} is not supported; use one of {', '.join(SUPPORTED_TYPES)}")
    head_dim = config.hidden_size // config.num_attention_heads
    if getattr(config, "head_dim", None) not in (None, head_dim):
        raise ValueError(f"head_dim {config.head_dim} != hidden_size / num_attention_heads ({head_dim}), which "
                         "Granite cannot express")
    shared = {k: getattr(config, k) for k in _SHARED if hasattr(config, k)}
    return GraniteConfig(**shared, embedding_multiplier=1.0, residual_multiplier=1.0, logits_scaling=1.0,
                         attention_multiplier=head_dim ** -0.5)  # LlamaAttention's scaling, bit for bit


def arch_of(config: PretrainedConfig) -> dict:
    """The ``resolve_preset`` numbers of a causal-LM config (the inverse of ``granite_config``); a field
    a class does not have (key/value heads, MLP width) falls back to what it means there."""
    heads = config.num_attention_heads
    return dict(d_model=config.hidden_size, n_layers=config.num_hidden_layers, n_heads=heads,
                n_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                d_ff=getattr(config, "intermediate_size", None) or 4 * config.hidden_size,
                max_seq_len=config.max_position_embeddings, tie_embeddings=bool(config.tie_word_embeddings),
                head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads)
