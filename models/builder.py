"""Build a stock transformers Granite causal LM from architecture numbers.

Granite is Llama-style (RMSNorm, RoPE, SwiGLU, GQA) plus the four muP forward
multipliers as config fields, so a muP-trained model exports as a plain
transformers model that ``AutoModelForCausalLM.from_pretrained`` loads without
custom code. Nothing here knows about distribution or optimizers.
"""

from __future__ import annotations

import math

import torch
from transformers import GraniteConfig, GraniteForCausalLM


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


def build_model(config: GraniteConfig, seed: int = 0) -> GraniteForCausalLM:
    """A freshly initialised model (fp32, on CPU); the same seed gives the same weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GraniteForCausalLM(config)
    return model


def count_params(model: torch.nn.Module) -> int:
    """Unique parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
