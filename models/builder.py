"""Build a stock transformers causal LM from architecture numbers: ``model.type`` picks the class.

Granite (the default) is Llama-style (RMSNorm, RoPE, SwiGLU, GQA) plus the four muP forward
multipliers as config fields, so a muP-trained model exports as a plain transformers model that
``AutoModelForCausalLM.from_pretrained`` loads without custom code. ``granite_swa`` is the same
with sliding-window layers (one full-attention layer in four, the class's own pattern) and
attention sinks, multipliers included. ``llama`` and ``qwen3`` (q/k RMSNorm) have no multipliers:
standard parametrization only. Nothing here knows about distribution or optimizers.
"""

from __future__ import annotations

import math

import torch
from transformers import AutoConfig, AutoModelForCausalLM, GraniteConfig, GraniteForCausalLM, PretrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from models.presets import MUP_TYPES, TYPES


def padded_vocab(vocab_size: int, multiple: int = 128) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple`` (1: unchanged). A vocabulary such as
    27,389 sends the embedding and readout GEMMs to slow fallback kernels on GPU; the extra rows are
    never targets (labels are the tokenizer's ids) and transformers accepts ``vocab_size`` larger than
    the tokenizer."""
    assert vocab_size >= 1 and multiple >= 1, (vocab_size, multiple)
    return -(-vocab_size // multiple) * multiple


def granite_config(arch: dict, vocab_size: int, *, bos_token_id: int | None = None,
                   eos_token_id: int | None = None, pad_token_id: int | None = None,
                   multipliers: dict | None = None) -> GraniteConfig:
    """GraniteConfig from ``resolve_preset`` numbers. Without ``multipliers`` it is standard
    parametrization: attention scaled by 1/sqrt(head_dim), all other multipliers 1."""
    head_dim = arch["d_model"] // arch["n_heads"]
    mult = dict(embedding_multiplier=1.0, attention_multiplier=1.0 / math.sqrt(head_dim),
                residual_multiplier=1.0, logits_scaling=1.0)
    mult.update(multipliers or {})
    return GraniteConfig(
        vocab_size=vocab_size,
        hidden_size=arch["d_model"],
        intermediate_size=arch["d_ff"],
        num_hidden_layers=arch["n_layers"],
        num_attention_heads=arch["n_heads"],
        num_key_value_heads=arch["n_kv_heads"],
        max_position_embeddings=arch["max_seq_len"],
        tie_word_embeddings=arch["tie_embeddings"],
        rms_norm_eps=1e-6,
        initializer_range=0.02,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        use_cache=False,
        **mult,
    )


def model_config(model_type: str, arch: dict, vocab_size: int, *, sliding_window: int | None = None,
                 multipliers: dict | None = None, moe: dict | None = None, aux_loss_coef: float = 0.01,
                 **token_ids) -> PretrainedConfig:
    """The ``model_type`` class's config from ``resolve_preset`` numbers (``token_ids``: bos/eos/pad
    ids). ``multipliers`` only for ``MUP_TYPES``; ``sliding_window`` for the sliding-window layers of
    granite_swa (None: the class's default); ``moe`` (``resolve_moe``) and ``aux_loss_coef`` (the
    load-balancing loss added to ``.loss``; deepseek_v3 has none) for ``MOE_TYPES``."""
    if model_type not in TYPES:
        raise ValueError(f"model.type {model_type!r} is unknown; choose one of {', '.join(TYPES)}")
    if model_type == "granite":
        return granite_config(arch, vocab_size, multipliers=multipliers, **token_ids)
    assert not multipliers or model_type in MUP_TYPES, f"{model_type} has no muP multipliers"
    head_dim = arch["d_model"] // arch["n_heads"]
    common = dict(vocab_size=vocab_size, hidden_size=arch["d_model"], intermediate_size=arch["d_ff"],
                  num_hidden_layers=arch["n_layers"], num_attention_heads=arch["n_heads"],
                  num_key_value_heads=arch["n_kv_heads"], max_position_embeddings=arch["max_seq_len"],
                  tie_word_embeddings=arch["tie_embeddings"], rms_norm_eps=1e-6, initializer_range=0.02,
                  use_cache=False, **{k: token_ids.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")})
    cls = CONFIG_MAPPING[model_type]
    mult = {"embedding_multiplier": 1.0, "attention_multiplier": head_dim ** -0.5, "residual_multiplier": 1.0,
            "logits_scaling": 1.0, **(multipliers or {})}
    window = {} if sliding_window is None else {"sliding_window": sliding_window}
    if model_type == "granite_swa":
        return cls(**common, **mult, **window)
    if model_type == "granitemoe_swa":  # its shared experts are one MLP of shared_experts x the expert width
        return cls(**{**common, "intermediate_size": moe["expert_d_ff"]}, **mult, **window,
                   num_local_experts=moe["experts"], num_experts_per_tok=moe["experts_per_token"],
                   shared_intermediate_size=moe["shared_experts"] * moe["expert_d_ff"],
                   output_router_logits=aux_loss_coef > 0, router_aux_loss_coef=aux_loss_coef)
    if model_type == "granitemoe":
        return cls(**{**common, "intermediate_size": moe["expert_d_ff"]}, **mult, num_local_experts=moe["experts"],
                   num_experts_per_tok=moe["experts_per_token"], output_router_logits=aux_loss_coef > 0,
                   router_aux_loss_coef=aux_loss_coef)
    if model_type == "qwen3_moe":
        return cls(**common, head_dim=head_dim, num_experts=moe["experts"],
                   num_experts_per_tok=moe["experts_per_token"],
                   moe_intermediate_size=moe["expert_d_ff"], output_router_logits=aux_loss_coef > 0,
                   router_aux_loss_coef=aux_loss_coef)
    if model_type == "deepseek_v3":
        return cls(**common, **mla_dims(arch), n_routed_experts=moe["experts"],
                   num_experts_per_tok=moe["experts_per_token"], n_shared_experts=moe["shared_experts"],
                   moe_intermediate_size=moe["expert_d_ff"], first_k_dense_replace=1, n_group=1, topk_group=1,
                   norm_topk_prob=True, routed_scaling_factor=1.0)
    return cls(**common, head_dim=head_dim)  # qwen3's head_dim defaults to 128 whatever the width


def mla_dims(arch: dict) -> dict:
    """deepseek_v3's multi-head latent attention at preset sizes (the class defaults, 1536/512 ranks
    and 128/64/128 head dimensions, are DeepSeek-V3's 7168-wide model's). Per head: a no-RoPE part of
    the head width, a RoPE part of about half that (even: rotary pairs), values of the head width; the
    query's low rank is half
    the model width and the key/value latent a quarter (DeepSeek-V3: 0.21 and 0.07 of 7168)."""
    head_dim = arch["d_model"] // arch["n_heads"]
    return dict(q_lora_rank=max(16, arch["d_model"] // 2), kv_lora_rank=max(16, arch["d_model"] // 4),
                qk_nope_head_dim=head_dim, qk_rope_head_dim=max(2, head_dim // 4 * 2), v_head_dim=head_dim)


def load_model_config(path: str) -> PretrainedConfig:
    """A config saved with ``to_json_file`` (a checkpoint's or the pin's ``model_config.json``), as its
    own class."""
    return AutoConfig.from_pretrained(path)


def build_model(config: PretrainedConfig, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised model of ``config``'s class (fp32, on CPU); the same seed gives the same
    weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GraniteForCausalLM(config) if config.model_type == "granite" else \
            AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def active_params(model: torch.nn.Module) -> int:
    """The parameters one token uses: all of them, less the routed experts it is not sent to
    ((E - k) / E of every expert stack, ``models.moe``)."""
    from models.moe import moe_blocks

    idle = sum(p.numel() * (b.n_experts - b.top_k) // b.n_experts for b in moe_blocks(model)
               for p in b.experts.parameters(recurse=False))
    return count_params(model) - idle
