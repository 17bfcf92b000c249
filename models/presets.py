"""Model presets: the architecture numbers for each named size (vocab comes from the tokenizer), and
the transformers classes (``model.type``) they build: every size applies to every type."""

from __future__ import annotations

# model.type: transformers model_type
TYPES = ("granite", "granite_swa", "llama", "qwen3", "granitemoe", "granitemoe_swa", "qwen3_moe", "deepseek_v3")
MUP_TYPES = ("granite", "granite_swa", "granitemoe", "granitemoe_swa")  # their configs carry the muP multipliers
MOE_TYPES = ("granitemoe", "granitemoe_swa", "qwen3_moe", "deepseek_v3")  # mixture-of-experts MLPs (expert stacks)
SHARED_EXPERT_TYPES = ("deepseek_v3", "granitemoe_swa")  # always-on shared experts beside the routed ones
SWA_TYPES = ("granite_swa", "granitemoe_swa")  # sliding-window layers (model.sliding_window)

# The mixture-of-experts numbers every size preset gets with a MoE model.type (model.experts etc. override):
# 8 routed experts, 2 per token, each half the dense MLP's width, so a token's MLP FLOPs equal the dense
# preset's; deepseek_v3 adds one shared expert of the same width. ``active_params`` counts what a token uses.
MOE_DEFAULTS = dict(experts=8, experts_per_token=2, shared_experts=1)

PRESETS: dict[str, dict] = {
    # CI / CPU: < 2M parameters with a 4k vocabulary.
    "tiny": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=4, d_ff=384, max_seq_len=512, tie_embeddings=True),
    # The convergence benchmark's larger model: tiny at twice the width (muP's transfer is over width, so the
    # depth stays): 4x tiny's non-embedding parameters, 3.2x in all; minutes on a CPU.
    "small": dict(d_model=256, n_layers=4, n_heads=8, n_kv_heads=8, d_ff=768, max_seq_len=512, tie_embeddings=True),
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


def resolve_moe(model_type: str, arch: dict, **overrides) -> dict:
    """The MoE numbers of a MoE ``model_type`` ({} for a dense one): experts, experts_per_token,
    shared_experts (0 for classes without them) and expert_d_ff (default: the dense d_ff / top-k).
    Numbers that cannot fit are a ValueError naming the key."""
    given = {k: v for k, v in overrides.items() if v is not None}
    if model_type not in MOE_TYPES:
        if given:
            raise ValueError(f"model.{sorted(given)[0]} is for mixture-of-experts classes ({', '.join(MOE_TYPES)}); "
                             f"model.type {model_type} has dense MLPs")
        return {}
    moe = {**MOE_DEFAULTS, "expert_d_ff": None, **given}
    if model_type not in SHARED_EXPERT_TYPES:
        if given.get("shared_experts"):
            raise ValueError(f"model.shared_experts: {model_type} has no shared experts (only "
                             f"{', '.join(SHARED_EXPERT_TYPES)}); leave it unset")
        moe["shared_experts"] = 0
    if moe["experts"] < 2:
        raise ValueError(f"model.experts must be >= 2 for a mixture of experts, got {moe['experts']}")
    if not 1 <= moe["experts_per_token"] <= moe["experts"]:
        raise ValueError(f"model.experts_per_token must be between 1 and model.experts ({moe['experts']}), "
                         f"got {moe['experts_per_token']}")
    if moe["expert_d_ff"] is None:
        moe["expert_d_ff"] = max(1, arch["d_ff"] // moe["experts_per_token"])
    return moe
