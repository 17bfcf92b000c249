"""The one place that knows how ZeRO-1/2 lays the model out in an optimizer's param groups.

Without DeepSpeed a group holds the parameters themselves. Under ZeRO-1/2 DeepSpeed replaces a
group's params by ONE flat fp32 partition per rank and links every model parameter to its fragment
of that partition (``param._hp_mapping``, ``deepspeed.utils.tensor_fragment``: ``lp_fragment_address``
= where the fragment starts inside the parameter, ``hp_fragment_address`` = where it starts inside
the flat partition). Everything that reads that layout calls this module: the EMA, the checkpoint
shards (``reshard.py``), the run's build and the sharded Muon's matrix layout (``optim/layout.py``).

A ``Fragment`` says which elements of which parameter a held tensor covers:
``(param name, start in param, numel, start in held tensor)``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

Fragment = tuple[str, int, int, int]  # (param name, start in param, numel, start in held tensor)


def is_flat_partition(held: list[torch.Tensor], params: list[torch.Tensor]) -> bool:
    """Whether a group that was built from ``params`` now holds a ZeRO flat partition instead."""
    return len(held) == 1 and held[0].ndim == 1 and bool(params) and not any(held[0] is p for p in params)


def is_sharded(optimizer, orig_groups: list[list[torch.Tensor]]) -> bool:
    """Whether any of the optimizer's groups holds a ZeRO partition (not whole parameters)."""
    return any(is_flat_partition(g["params"], orig) for g, orig in zip(optimizer.param_groups, orig_groups))


def param_fragment(p: torch.Tensor, flat: torch.Tensor | None = None) -> tuple[int, int, int] | None:
    """``(start in p, numel, start in the flat partition)`` of the part of ``p`` this rank holds, or
    None when it holds none of it. With ``flat``, checks that the fragment is a view of it."""
    mapping = getattr(p, "_hp_mapping", None)
    if mapping is None:
        return None
    lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
    assert lp.numel == hp.numel
    if flat is not None:
        assert hp.start + hp.numel <= flat.numel()
        assert mapping.hp_fragment.data_ptr() == flat.data_ptr() + hp.start * flat.element_size(), \
            "DeepSpeed's hp fragment is not a view of the group's flat partition"
    return lp.start, lp.numel, hp.start


def held_fragments(optimizer, orig_groups: list[list[torch.Tensor]], names: dict[int, str]) -> list[list[Fragment]]:
    """For every tensor the optimizer holds (group order), the parameter elements it covers.

    ``orig_groups`` are the groups' model params captured before ``accelerator.prepare``. Under
    ZeRO-1/2 a group holds one flat partition and each param links to its fragment of it through
    DeepSpeed's ``_hp_mapping`` (``param_fragment``); otherwise a group holds the
    params themselves, whole."""
    out = []
    for group, orig in zip(optimizer.param_groups, orig_groups):
        held = group["params"]
        if is_flat_partition(held, orig):
            out.append([(names[id(p)], *f) for p in orig if (f := param_fragment(p)) is not None])
        else:
            out.extend([[(names[id(p)], 0, p.numel(), 0)] for p in held])
    return out


def assemble(held: list[torch.Tensor], fragments: list[list[Fragment]], shapes: dict[str, tuple],
             device: torch.device | str = "cpu", sharded: bool = True) -> dict[str, torch.Tensor]:
    """Full fp32 tensors by parameter name from every rank's ``held`` tensors and their ``fragments``
    (the EMA's shadows, or the optimizer's master partitions), on every rank. Collective when sharded:
    one all-reduce of the model's size."""
    order = sorted(shapes)
    offsets, total = {}, 0
    for name in order:
        offsets[name], total = total, total + math.prod(shapes[name])
    flat = torch.zeros(total, dtype=torch.float32, device=device)
    for tensor, frags in zip(held, fragments):
        src = tensor.detach().reshape(-1)
        for name, start, numel, at in frags:
            flat[offsets[name] + start:][:numel].copy_(src[at:at + numel])
    if sharded and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flat)  # fragments of different ranks are disjoint: the sum is exact
    return {n: flat[offsets[n]:][:math.prod(shapes[n])].view(shapes[n]) for n in order}




def simulate_zero_fragments(numels: list[int], world: int) -> list[list[tuple[int, int, int, int]]]:
    """What DeepSpeed ZeRO-1/2 (0.19, defaults: no per-parameter alignment, no round-robin order) gives
    each of ``world`` ranks of one param group whose params have ``numels``: the group flattened in
    order, padded to a multiple of 2 x world, cut into ``world`` equal partitions. Per rank, the
    ``(param index, start in param, numel, start in the partition)`` of every param it holds part of:
    the fragments ``param_fragment`` reads from ``_hp_mapping`` in a real run (tests compare the two
    at W=2 and W=4), for layouts at world sizes no test launches."""
    total = sum(numels)
    alignment = 2 * world
    size = -(-total // alignment) * alignment // world
    starts = [sum(numels[:i]) for i in range(len(numels))]
    out = []
    for r in range(world):
        lo, hi = r * size, (r + 1) * size
        out.append([(i, max(lo, s) - s, min(hi, s + n) - max(lo, s), max(lo, s) - lo)
                    for i, (s, n) in enumerate(zip(starts, numels)) if max(lo, s) < min(hi, s + n)])
    return out
