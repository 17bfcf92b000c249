"""muP: width multipliers, structural parameter classes, init and per-group learning rates.

Maximal Update Parametrization (Yang et al., "Tensor Programs V", 2022) makes the best
hyper-parameters of a width-``base_width`` model also the best at width ``d_model``. Three
pieces, all keyed on ``width_mult = d_model / base_width``:

1. Forward multipliers, carried by the transformers Granite config so that a muP model
   exports as a stock model (``mup_multipliers``):
   ``embedding_multiplier = alpha_emb``, ``attention_multiplier = alpha_attn / head_dim``
   (muP's 1/d attention instead of 1/sqrt(d)), ``logits_scaling = width_mult / alpha_out``
   (Granite *divides* the logits by it, i.e. the readout output is multiplied by
   alpha_out / width_mult), ``residual_multiplier`` (a constant, 1 by default).
2. Init (``apply_mup_init``): hidden matrices std = base_std * sqrt(base_width / fan_in)
   (optionally / sqrt(2 n_layers) for each block's output projection), embeddings and an
   untied readout a constant base_std (readout optionally zero), query optionally zero.
3. Per-group lr (``lr_multiplier``), read by ``trainer/optim/groups.py``.

The table we use is the "readout multiplier" form of TP V (its Table 8 / the ``mup`` package's
``MuReadout``; Cerebras "Practitioner's guide to muP" Table 1), for Adam:

    class      init std                       forward             Adam lr      Muon lr
    embedding  base_std                       * alpha_emb         base         (AdamW)
    hidden     base_std*sqrt(base_width/fan_in)                   base / m     see below
    router     base_std*sqrt(base_width/fan_in)                   base / m     (AdamW)
    readout    base_std (or 0)                * alpha_out / m     base         (AdamW)
    vector     1 (gains) / 0 (biases)                             base         (AdamW)

Hidden matrices include attention's low-rank (MLA) projections and every expert of a MoE stack
(E, out, in): fan_in is one expert's ``in``. A router (E, d_model) maps the width to one logit per
expert, like a hidden matrix with a fixed fan_out: it takes a hidden matrix's init and Adam lr, and
goes to AdamW even with Muon, since orthogonalizing an E-row matrix would give every expert's
logit update the same norm whatever its gradient (the rule DeepSeek-V3's and Moonlight's
recipes follow: Muon for the expert and attention matrices, AdamW for the gate).

TP V's Table 3 instead keeps the readout forward at 1 and puts the 1/m into the readout's lr
and init; the two are equivalent for Adam. Scaling the readout lr by 1/m *and* dividing the
logits by m would count the width twice (the readout would stop learning as width grows),
which the coordinate check (``trainer/studies/coord_check.py``) shows. A tied readout is the
embedding matrix: constant lr and std, the 1/m comes from ``logits_scaling``.

Muon ("A Spectral Condition for Feature Learning", Yang, Simon & Bernstein 2023): an update
must have spectral norm ~ sqrt(fan_out / fan_in). Newton-Schulz returns singular values ~1,
so Muon's 'original' scale max(1, fan_out/fan_in)**0.5 already satisfies it at any width and
its lr is width-independent; the 'match_rms_adamw' scale 0.2*sqrt(max(A, B)) grows the
spectral norm as sqrt(width), so its lr takes 1/sqrt(width_mult).
"""

from __future__ import annotations

import math

import torch

from trainer.config.mup import MUP_CLASSES, MupConfig

# ---------------------------------------------------------------------------------------------
# Pure math: width multiplier, forward multipliers, init std, lr and weight-decay factors.


def width_mult(d_model: int, cfg: MupConfig) -> float:
    """m = d_model / base_width under muP; 1 (standard parametrization) when disabled."""
    return d_model / cfg.base_width if cfg.enabled else 1.0


def mup_multipliers(arch: dict, cfg: MupConfig) -> dict:
    """Granite forward multipliers for ``models.granite_config(..., multipliers=...)``; {} when disabled.

    ``attention_multiplier`` is muP's 1/head_dim (TP V sec. 4: q and k become correlated during
    training, so their dot product grows like d, not sqrt(d)). ``logits_scaling`` divides the
    logits in Granite, so m / alpha_out gives the readout muP's alpha_out / m output multiplier."""
    if not cfg.enabled:
        return {}
    head_dim = arch["d_model"] // arch["n_heads"]
    return dict(embedding_multiplier=cfg.embedding_multiplier,
                attention_multiplier=cfg.attn_alpha / head_dim,
                residual_multiplier=cfg.residual_multiplier,
                logits_scaling=width_mult(arch["d_model"], cfg) / cfg.output_alpha)


def hidden_init_std(fan_in: int, base_width: int, base_std: float) -> float:
    """Hidden-matrix std ~ 1/sqrt(fan_in), anchored so a fan_in of base_width gets base_std.

    Var(W) ~ 1/fan_in keeps W x at O(1) coordinates for O(1) x at any width (TP V Table 3)."""
    return base_std * math.sqrt(base_width / fan_in)


def lr_multiplier(cls: str, kind: str, wmult: float, muon_scale: str = "original") -> float:
    """Factor on the group's base lr for muP class ``cls`` optimized by ``kind`` (muon|adamw).

    AdamW (TP V Table 8 / Cerebras muP guide, readout multiplier form, see module docstring):
    hidden and router lr / width_mult; embeddings, vectors and the readout constant (the readout's 1/m
    is in ``logits_scaling``). Muon ("A Spectral Condition for Feature Learning"): 'original'
    scale max(1, A/B)**0.5 gives updates of width-independent spectral norm, so lr * 1;
    'match_rms_adamw' scale 0.2*sqrt(max(A, B)) has spectral norm ~ sqrt(width), so
    lr / sqrt(width_mult)."""
    if cls not in MUP_CLASSES:
        raise ValueError(f"unknown muP class {cls!r}; expected one of {MUP_CLASSES}")
    if kind == "muon":
        if muon_scale == "original":
            return 1.0
        if muon_scale == "match_rms_adamw":
            return wmult ** -0.5
        raise ValueError(f"optim.scale must be 'original' or 'match_rms_adamw', got {muon_scale!r}")
    if kind != "adamw":
        raise ValueError(f"unknown optimizer kind {kind!r}; expected 'muon' or 'adamw'")
    return 1.0 / wmult if cls in ("hidden", "router") else 1.0


def weight_decay_multiplier(lr_mult: float, independent: bool) -> float:
    """Factor on a group's weight_decay. torch's decoupled decay is p -= lr * wd * p, so a muP lr
    of base/m also shrinks the decay m-fold; ``independent`` (mup.independent_wd) undoes that
    so lr * wd stays the base width's (Wortsman et al. 2023, "Small-scale proxies for
    large-scale Transformer training instabilities", sec. 3.2.2)."""
    return 1.0 / lr_mult if independent else 1.0


# ---------------------------------------------------------------------------------------------
# Structure: which parameter is what, found from the model, not from names.


def classify_params(model, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Name -> muP class from the model's structure, never from names:
    'embedding' (get_input_embeddings), 'readout' (get_output_embeddings, unless tied to the
    embedding), 'vector' (1-D gains and biases), 'router' (a MoE block's router, ``models.moe``),
    'hidden' (every other >= 2-D matrix: attention and MLP projections, MLA's low-rank ones, expert
    stacks). ``overrides`` (mup.class_overrides) is the documented escape hatch for odd architectures."""
    from models.moe import router_params

    routers = router_params(model)
    emb = model.get_input_embeddings().weight
    out_mod = model.get_output_embeddings()
    readout = out_mod.weight if out_mod is not None else None
    classes = {}
    for name, p in model.named_parameters():  # a tied readout is yielded once, as the embedding
        if p is emb:
            classes[name] = "embedding"
        elif readout is not None and p is readout:
            classes[name] = "readout"
        elif p.ndim < 2:
            classes[name] = "vector"
        elif name in routers:
            classes[name] = "router"
        else:
            classes[name] = "hidden"
    for name, cls in (overrides or {}).items():
        if name not in classes:
            raise ValueError(f"mup.class_overrides names '{name}', which is not a parameter of the model")
        classes[name] = cls
    return classes


def _first_tensor(out):
    if torch.is_tensor(out):
        return out
    if isinstance(out, (tuple, list)) and out and torch.is_tensor(out[0]):
        return out[0]
    return None


@torch.no_grad()
def block_output_projections(model) -> set[str]:
    """Names of the weights that write into the residual stream: a Linear whose output *is* its
    parent module's output (attention's o_proj, the MLP's down_proj) and has the model width.

    Found by one forward pass on two tokens with hooks, so it works for any causal LM whose
    sub-layers end in a projection, without knowing its attribute names."""
    outputs, hooks = {}, []
    for name, mod in model.named_modules():
        hooks.append(mod.register_forward_hook(
            lambda m, i, o, name=name: outputs.__setitem__(name, _first_tensor(o))))
    try:
        model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=model.get_input_embeddings().weight.device))
    finally:
        for h in hooks:
            h.remove()
    width = model.config.hidden_size
    found = set()
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or "." not in name:
            continue
        parent = name.rsplit(".", 1)[0]
        out = outputs.get(name)
        if out is not None and out is outputs.get(parent) and mod.out_features == width:
            found.add(f"{name}.weight")
    return found


def _named_by(model, names: list[str]) -> set[str]:
    """Weights of modules whose last name component is in ``names`` (the override tables)."""
    return {f"{n}.weight" for n, m in model.named_modules()
            if n.rsplit(".", 1)[-1] in names and isinstance(getattr(m, "weight", None), torch.Tensor)}


@torch.no_grad()
def apply_mup_init(model, cfg: MupConfig, seed: int = 0) -> None:
    """Re-initialise ``model`` in place with muP stds (see the module table); no-op when disabled.

    Width and depth come from ``model.config`` (hidden_size, num_hidden_layers). Vectors keep the
    model's own init (gains 1, biases 0). ``seed`` makes the init identical on every rank."""
    if not cfg.enabled:
        return
    classes = classify_params(model, cfg.class_overrides)
    out_proj = (_named_by(model, cfg.output_proj_names) if cfg.output_proj_names
                else block_output_projections(model)) if cfg.depth_scaled_init else set()
    query = _named_by(model, cfg.query_names) if cfg.query_zero_init else set()
    if cfg.query_zero_init and not query:
        raise ValueError(f"mup.query_zero_init: no module named any of {cfg.query_names}; set mup.query_names "
                         "to this architecture's query projection or mup.query_zero_init false")
    depth_factor = 1.0 / math.sqrt(2 * model.config.num_hidden_layers)
    from models.moe import moe_blocks

    experts = {f"{b.name}.{n}" for b in moe_blocks(model) for n, _ in b.experts.named_parameters()}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, p in model.named_parameters():
        cls = classes[name]
        if cls == "vector":
            continue
        if cls == "embedding" or (cls == "readout" and not cfg.readout_zero_init):
            std = cfg.base_std
        elif cls == "readout":
            std = 0.0
        elif name in query:
            std = 0.0
        else:  # an expert stack (E, out, in): one expert's fan_in; a conv (out, in, k..): in * k..
            fan_in = p.shape[-1] if name in experts else math.prod(p.shape[1:])
            std = hidden_init_std(fan_in, cfg.base_width, cfg.base_std)
            std *= depth_factor if name in out_proj else 1.0
        _normal_(p, std, gen)  # a tied readout is yielded once, as the embedding


def _normal_(p: torch.Tensor, std: float, gen: torch.Generator) -> None:
    if std == 0.0:
        p.zero_()
    else:  # drawn on CPU so the same seed gives the same weights on any device
        p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).mul_(std).to(p.dtype))
