"""Model presets: the architecture numbers for each named size (vocab comes from the tokenizer), and
the transformers classes (``model.type``) they build: every size applies to every type."""

from __future__ import annotations

TYPES = ("granite", "granite_swa", "llama", "qwen3")  # model.type: transformers model_type
MUP_TYPES = ("granite", "granite_swa")  # the classes whose config carries the muP forward multipliers

PRESETS: dict[str, dict] = {
    # CI / CPU: < 2M parameters with a 4k vocabulary.
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=384, max_seq_len=512, tie_embeddings=True),
    "125m": dict(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_ff=2048, max_seq_len=2048,
                 tie_embeddings=True),
    "350m": dict(d_model=1024, n_layers=24, n_heads=16, n_kv_heads=16, d_ff=2816, max_seq_len=2048,
                 tie_embeddings=True),
    "1b": dict(d_model=2048, n_layers=22, n_heads=32, n_kv_heads=8, d_ff=5632, max_seq_len=4096,
               tie_embeddings=False),
}


def resolve_preset(name: str, **overrides) -> dict:
    """The preset's numbers with non-None overrides applied; unknown preset is a ValueError."""
    if name not in PRESETS:
        raise ValueError(f"model.preset '{name}' is unknown; choose one of {', '.join(PRESETS)}")
    arch = dict(PRESETS[name])
    arch.update({k: v for k, v in overrides.items() if v is not None})
    if arch["d_model"] % arch["n_heads"]:
        raise ValueError(f"model.d_model ({arch['d_model']}) must be divisible by model.n_heads ({arch['n_heads']})")
    if arch["n_heads"] % arch["n_kv_heads"]:
        raise ValueError(f"model.n_heads ({arch['n_heads']}) must be divisible by model.n_kv_heads")
    return arch
