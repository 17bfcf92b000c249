"""Param groups: one per (optimizer kind x muP class), each with its own lr, weight decay and settings.

muP classes come from the model's structure (``trainer.mup.classify_params``). With
``optim.name == "muon"`` the hidden matrices go to Muon, each split into the matrices its module
defines (``matrices.py``: an expert stack is one matrix per expert, gate and up apart), and
embeddings, readout, vectors (gains, biases) and MoE routers to AdamW; with ``"adamw"`` everything
goes to AdamW. The lr of each group is
its base lr times ``trainer.mup.lr_multiplier`` at the model's width multiplier; its weight decay
is scaled by ``trainer.mup.weight_decay_multiplier`` (mup.independent_wd).
"""

from __future__ import annotations

from trainer.mup import classify_params, lr_multiplier, weight_decay_multiplier, width_mult
from trainer.optim.matrices import param_splits

GROUP_ORDER = ("hidden", "embedding", "readout", "vector", "router")  # Muon group first, then AdamW's


def build_param_groups(model, cfg) -> list[dict]:
    """Groups for ``ShardedMuon`` (or ``torch.optim.AdamW``); empty groups are left out.

    Every dict has params, kind ('muon'|'adamw'), name ('<kind>_<class>'), lr, weight_decay and
    the kind's own settings; a Muon group also ``matrices``, each param's split (``matrices.py``).
    The params are never tagged (no ``use_muon``: DeepSpeed hijacks it)."""
    o = cfg.optim
    wmult = width_mult(model.config.hidden_size, cfg.mup)
    classes = classify_params(model, cfg.mup.class_overrides)
    named = dict(model.named_parameters())
    splits = param_splits(model, [n for n, c in classes.items() if c == "hidden"]) if o.name == "muon" else {}
    groups = []
    for cls in GROUP_ORDER:
        names = [n for n, c in classes.items() if c == cls and named[n].requires_grad]
        params = [named[n] for n in names]
        if not params:
            continue
        kind = "muon" if o.name == "muon" and cls == "hidden" else "adamw"
        lr_mult = lr_multiplier(cls, kind, wmult, o.scale)
        wd_mult = weight_decay_multiplier(lr_mult, cfg.mup.independent_wd)
        if kind == "muon":
            groups.append(dict(params=params, matrices=[splits[n] for n in names], kind=kind, name=f"muon_{cls}",
                               lr=o.lr * lr_mult, weight_decay=o.weight_decay * wd_mult, momentum=o.momentum,
                               nesterov=o.nesterov,
                               ns_steps=o.ns_steps, ns_method=o.ns_method, scale=o.scale, ns_dtype=o.ns_dtype))
        else:
            groups.append(dict(params=params, kind=kind, name=f"adamw_{cls}", lr=o.adamw_lr * lr_mult,
                               weight_decay=0.0 if cls == "vector" else o.adamw_weight_decay * wd_mult,
                               betas=tuple(o.adamw_betas), eps=o.adamw_eps))
    return groups
