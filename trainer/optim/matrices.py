"""How each Muon parameter splits into the matrices Newton-Schulz orthogonalizes: decided by the module
that owns the parameter (a small table keyed by module type), never guessed from the shape alone.

A split is ``(count, (rows, cols))``: the parameter, flattened, is ``count`` contiguous matrices of
that shape, each orthogonalized alone and scaled by its own shape (``muon_scale``).

* a ``Linear`` (or any module's 2-D weight): one matrix, as it is;
* a convolution (out, in, k...): one (out, in * k...) matrix (the conv case of the other seed);
* a MoE expert stack (E, out, in) of the classes in ``EXPERT_STACKS``: E matrices (out, in); a
  fused ``gate_up_proj`` (E, 2F, d), gate rows then up rows, is 2E matrices (F, d): gate and up are
  separate matrices, as they are in a dense MLP; so are the halves of a Linear that fuses them
  (granitemoe_swa's shared experts, ``FUSED_GATE_UP``) (gpt_oss interleaves them along the last dimension
  instead: not contiguous, so not in the table, and refused like any other unknown > 2-D parameter).

    >>> param_splits(model, ["model.layers.0.mlp.experts.gate_up_proj"])
    {'model.layers.0.mlp.experts.gate_up_proj': (16, (96, 128))}
"""

from __future__ import annotations

import math

import torch

Split = tuple[int, tuple[int, int]]

_STACK = {"gate_up_proj": "halves", "down_proj": "stack"}
# module class -> parameter -> how its (E, a, b) stack splits: "stack" E x (a, b); "halves" 2E x (a/2, b)
EXPERT_STACKS: dict[str, dict[str, str]] = {
    "GraniteMoeExperts": _STACK,  # granitemoe: gate_up_proj (E, 2F, d), down_proj (E, d, F)
    "Qwen3MoeExperts": _STACK,
    "DeepseekV3Experts": _STACK,
    "GraniteMoeSWAExperts": _STACK,
}
# module class -> its Linear child whose (2F, d) weight fuses gate (first F rows) and up: 2 x (F, d)
FUSED_GATE_UP: dict[str, str] = {"GraniteMoeSWAMLP": "input_linear"}  # granitemoe_swa's shared experts


def split_of(module: torch.nn.Module, param_name: str, shape: tuple[int, ...], parent: str = "",
             child: str = "") -> Split | None:
    """The split of ``module``'s parameter ``param_name`` (``module`` is the ``child`` attribute of a
    module of class ``parent``); None when the table has no rule for it."""
    if len(shape) == 2 and FUSED_GATE_UP.get(parent) == child and param_name == "weight" and shape[0] % 2 == 0:
        return 2, (shape[0] // 2, shape[1])
    if len(shape) == 2:
        return 1, (shape[0], shape[1])
    if isinstance(module, torch.nn.modules.conv._ConvNd) and param_name == "weight":
        return 1, (shape[0], math.prod(shape[1:]))
    rule = EXPERT_STACKS.get(type(module).__name__, {}).get(param_name)
    if rule == "stack" and len(shape) == 3:
        return shape[0], (shape[1], shape[2])
    if rule == "halves" and len(shape) == 3 and shape[1] % 2 == 0:
        return 2 * shape[0], (shape[1] // 2, shape[2])
    return None


def param_splits(model: torch.nn.Module, names: list[str]) -> dict[str, Split]:
    """The split of each named parameter. An > 2-D parameter the table does not know is refused in
    one line rather than guessed: its shape alone cannot say how it splits into matrices."""
    modules = dict(model.named_modules())
    owner = {f"{m}.{n}" if m else n: (m, mod, n) for m, mod in modules.items()
             for n, _ in mod.named_parameters(recurse=False)}
    params = dict(model.named_parameters())
    out = {}
    for name in names:
        (path, mod, short), shape = owner[name], tuple(params[name].shape)
        parent, _, child = path.rpartition(".")
        split = split_of(mod, short, shape, type(modules[parent]).__name__ if path else "", child)
        if split is None:
            raise ValueError(f"optim.name muon: {name} is a {len(shape)}-D {shape} parameter of {type(mod).__name__}, "
                             "which Muon cannot split into matrices by its shape; use --optim.name adamw, or "
                             "mup.class_overrides to send it to AdamW (vector)")
        out[name] = split
    return out
