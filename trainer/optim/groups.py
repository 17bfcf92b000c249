"""Param groups: one per (optimizer kind x muP class), each with its own lr, weight decay and settings.

muP classes come from the model's structure (``trainer.mup.classify_params``). With
``optim.name == "muon"`` the hidden matrices go to Muon and embeddings, readout and vectors
(gains, biases) to AdamW; with ``"adamw"`` everything goes to AdamW. The lr of each group is
its base lr times ``trainer.mup.lr_multiplier`` at the model's width multiplier; its weight decay
is scaled by ``trainer.mup.weight_decay_multiplier`` (mup.independent_wd).
"""

from __future__ import annotations

from trainer.mup import classify_params, lr_multiplier, weight_decay_multiplier, width_mult

GROUP_ORDER = ("hidden", "embedding", "readout", "vector")  # Muon group first, then AdamW's


def build_param_groups(model, cfg) -> list[dict]:
    """Groups for ``ShardedMuon`` (or ``torch.optim.AdamW``); empty groups are left out.

    Every dict has params, kind ('muon'|'adamw'), name ('<kind>_<class>'), lr, weight_decay and
    the kind's own settings. The params are never tagged (no ``use_muon``: DeepSpeed hijacks it)."""
    o = cfg.optim
    wmult = width_mult(model.config.hidden_size, cfg.mup)
    classes = classify_params(model, cfg.mup.class_overrides)
    named = dict(model.named_parameters())
    if o.name == "muon":
        check_matrices(model, [n for n, c in classes.items() if c == "hidden"])
    groups = []
    for cls in GROUP_ORDER:
        params = [named[n] for n, c in classes.items() if c == cls and named[n].requires_grad]
        if not params:
            continue
        kind = "muon" if o.name == "muon" and cls == "hidden" else "adamw"
        lr_mult = lr_multiplier(cls, kind, wmult, o.scale)
        wd_mult = weight_decay_multiplier(lr_mult, cfg.mup.independent_wd)
        if kind == "muon":
            groups.append(dict(params=params, kind=kind, name=f"muon_{cls}", lr=o.lr * lr_mult,
                               weight_decay=o.weight_decay * wd_mult, momentum=o.momentum, nesterov=o.nesterov,
                               ns_steps=o.ns_steps, scale=o.scale, ns_dtype=o.ns_dtype))
        else:
            groups.append(dict(params=params, kind=kind, name=f"adamw_{cls}", lr=o.adamw_lr * lr_mult,
                               weight_decay=0.0 if cls == "vector" else o.adamw_weight_decay * wd_mult,
                               betas=tuple(o.adamw_betas), eps=o.adamw_eps))
    return groups


def check_matrices(model, hidden: list[str]) -> None:
    """Muon orthogonalizes each hidden parameter as one matrix: a 2-D weight as it is, a convolution's
    (out, in, k...) as (out, in * k...). Any other > 2-D parameter (an expert stack, a fused projection)
    is refused by name rather than guessed: its shape alone cannot say how it splits into matrices."""
    import torch

    owner = {f"{m}.{n}" if m else n: mod for m, mod in model.named_modules()
             for n, _ in mod.named_parameters(recurse=False)}
    params = dict(model.named_parameters())
    for name in hidden:
        mod, shape = owner[name], tuple(params[name].shape)
        if len(shape) > 2 and not isinstance(mod, torch.nn.modules.conv._ConvNd):
            raise ValueError(f"optim.name muon: {name} is a {len(shape)}-D {shape} parameter of {type(mod).__name__}, "
                             "which Muon cannot split into matrices by its shape; use --optim.name adamw, or "
                             "mup.class_overrides to send it to AdamW (vector)")
