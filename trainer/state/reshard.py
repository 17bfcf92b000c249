"""Layout-free training state: what each rank holds, keyed by parameter name and element range.

Under ZeRO-1/2 a rank's optimizer holds one flat fp32 partition per param group; without ZeRO it
holds whole parameters. Either way every held tensor covers a list of fragments
``(param name, start in param, numel, start in held tensor)`` (``trainer.state.fragments.held_fragments``,
read from DeepSpeed's ``_hp_mapping``). A shard file stores, per held tensor, its fragments and
the tensors of the same layout: the fp32 master weights (``master``), every optimizer state
tensor (``optim.<key>``, e.g. ``optim.momentum_buffer``, ``optim.exp_avg``) and the EMA
(``ema``); per param group the scalar optimizer state (``step``).

Loading at any world size or ZeRO stage: each rank memory-maps every shard file, reads only
the index, and copies the element ranges that overlap its own fragments (``overlaps``), so it
reads what it holds and no rank gathers the whole state. Nothing here depends on DeepSpeed's
checkpoint format; a DeepSpeed upgrade that keeps ``_hp_mapping`` keeps these files readable.

    >>> save_shard(path, client_optimizer, fragments, shapes, ema)      # every rank, its own file
    >>> load_shards(paths, client_optimizer, fragments, ema)            # every rank, all files
    >>> full = full_tensors(open_shards(paths), "ema")                  # offline: {name: tensor}
"""

from __future__ import annotations

import math

import torch

from trainer.state import storage
from trainer.state.fragments import Fragment

SHARD_VERSION = 1


def overlaps(want: Fragment, have: list[Fragment]) -> list[tuple[int, int, int]]:
    """Where the saved fragments ``have`` (one held tensor's) cover ``want``: (index into ``have``,
    start in the saved held tensor, start in the wanted held tensor, length) for each overlap."""
    name, start, numel, at = want
    out = []
    for k, (name2, start2, numel2, at2) in enumerate(have):
        lo, hi = max(start, start2), min(start + numel, start2 + numel2)
        if name2 == name and lo < hi:
            out.append((k, at2 + lo - start2, at + lo - start, hi - lo))
    return out


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t`` flat, with a storage of its own (``torch.save`` writes a view's whole storage)."""
    t = t.detach().reshape(-1)
    return t if t.untyped_storage().nbytes() == t.numel() * t.element_size() else t.clone()


def held_tensors(optimizer) -> list[tuple[int, torch.Tensor]]:
    """(group index, tensor) for every tensor the optimizer holds, in group order."""
    return [(g, p) for g, group in enumerate(optimizer.param_groups) for p in group["params"]]


def shard_state(optimizer, fragments: list[list[Fragment]], shapes: dict[str, tuple], ema=None) -> dict:
    """This rank's shard: the held tensors' fragments, master weights, optimizer state and EMA."""
    held = held_tensors(optimizer)
    assert len(held) == len(fragments)
    tensors: dict[str, list] = {"master": [_own(p) for _, p in held]}
    scalars: dict[int, dict] = {}
    for i, (g, p) in enumerate(held):
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value) and value.numel() == p.numel() and value.ndim > 0:
                tensors.setdefault(f"optim.{key}", [None] * len(held))[i] = _own(value)
            else:  # e.g. Adam's step: the same for every tensor of a group
                scalars.setdefault(g, {})[key] = value.detach().cpu().clone() if torch.is_tensor(value) else value
    if ema is not None:
        ema.join()
        tensors["ema"] = [_own(t) for t in ema.shadow]
    return {"version": SHARD_VERSION, "shapes": shapes, "groups": [g for g, _ in held],
            "fragments": [[tuple(f) for f in frags] for frags in fragments], "tensors": tensors,
            "scalars": scalars, "ema": None if ema is None else {"initialized": ema.initialized,
                                                                  "updates": ema.updates}}


def save_shard(path: str, optimizer, fragments, shapes, ema=None) -> None:
    storage.save_torch(shard_state(optimizer, fragments, shapes, ema), path)  # a full disk as the OSError it is


def open_shards(paths: list[str]) -> list[dict]:
    """Every shard file memory-mapped: the index is read now, tensor bytes when they are copied."""
    shards = [torch.load(p, mmap=True, weights_only=True, map_location="cpu") for p in paths]
    for path, sd in zip(paths, shards):
        if sd.get("version") != SHARD_VERSION:
            raise ValueError(f"{path}: shard version {sd.get('version')} != {SHARD_VERSION}")
    return shards


def copy_covered(dst: torch.Tensor, frags: list[Fragment], shards: list[dict], kind: str) -> torch.Tensor:
    """Copy ``kind`` for ``frags`` (fragments of the held tensor ``dst``) from whichever shards hold it;
    returns the mask of ``dst``'s elements that some shard covered.

    The one coverage rule of every reader (resume and offline): an element is covered when at least
    one saved piece holds it. Without ZeRO (DDP) every rank saves every parameter whole, so the
    same element arrives from W shards; the copies are equal, and it still counts once."""
    flat = dst.view(-1)
    covered = torch.zeros(flat.numel(), dtype=torch.bool)
    for frag in frags:
        for sd in shards:
            for j, saved in enumerate(sd["fragments"]):
                found = overlaps(frag, saved)
                src = sd["tensors"].get(kind, [None] * len(sd["fragments"]))[j] if found else None
                if src is None:
                    continue  # no piece here, or a tensor this kind does not cover (an Adam param's momentum)
                for _, at_src, at_dst, n in found:
                    with torch.no_grad():
                        flat[at_dst:at_dst + n].copy_(src[at_src:at_src + n])
                    covered[at_dst:at_dst + n] = True
    return covered


def _fill(dst: torch.Tensor, frags: list[Fragment], shards: list[dict], kind: str, label: str) -> None:
    """``copy_covered``, and every element of ``frags`` must be covered."""
    covered = copy_covered(dst, frags, shards, kind)
    want = torch.zeros_like(covered)
    for _, _, numel, at in frags:
        want[at:at + numel] = True
    if not bool(covered[want].all()):
        missing = next(f[0] for f in frags if not bool(covered[f[3]:f[3] + f[2]].all()))
        raise ValueError(f"checkpoint covers {int(covered[want].sum())} of {int(want.sum())} elements of {label} "
                         f"({kind}; first gap in {missing}): its shards do not hold the whole model, or it has no "
                         f"{kind} there (saved by another optimizer)")


def load_shards(shards: list[dict], optimizer, fragments: list[list[Fragment]], ema=None) -> None:
    """Fill this rank's held tensors (master), optimizer state and EMA from ``open_shards(...)`` of
    any world size: each element is copied from the shard that held it."""
    held = held_tensors(optimizer)
    kinds_of_group: dict[int, set] = {}
    for sd in shards:
        for j, g in enumerate(sd["groups"]):
            kinds_of_group.setdefault(g, set()).update(k for k, ts in sd["tensors"].items()
                                                       if k.startswith("optim.") and ts[j] is not None)
    scalars = {int(g): s for sd in shards for g, s in sd["scalars"].items()}
    for i, (g, p) in enumerate(held):
        _fill(p, fragments[i], shards, "master", f"held tensor {i}")
        state = optimizer.state[p]
        for kind in sorted(kinds_of_group.get(g, ())):
            key = kind[len("optim."):]
            if key not in state:
                state[key] = torch.zeros_like(p)
            _fill(state[key], fragments[i], shards, kind, f"held tensor {i}")
        for key, value in scalars.get(g, {}).items():
            state[key] = value.clone().to(p.device) if torch.is_tensor(value) else value
    if ema is not None:
        meta = shards[0]["ema"]
        if meta is None:  # a checkpoint from a run without EMA: the EMA starts from the restored weights
            ema.initialized = False
            return
        ema.join()
        for i, shadow in enumerate(ema.shadow):
            _fill(shadow, ema.fragments[i], shards, "ema", f"EMA slice {i}")
        ema.initialized, ema.updates = meta["initialized"], meta["updates"]


def full_tensors(shards: list[dict], kind: str) -> dict[str, torch.Tensor]:
    """Full tensors by parameter name for ``kind`` ('master', 'ema', 'optim.exp_avg', ...) from all
    shards of a checkpoint, in one process (offline tools; fp32 as saved). Parameters that ``kind``
    does not cover whole (e.g. ``optim.momentum_buffer`` of an Adam parameter) are left out."""
    if kind not in shards[0]["tensors"]:
        raise ValueError(f"no '{kind}' in this checkpoint; it holds {sorted(shards[0]['tensors'])}")
    out = {}
    for name, shape in shards[0]["shapes"].items():
        full = torch.full((math.prod(shape),), float("nan"))
        if bool(copy_covered(full, [(name, 0, full.numel(), 0)], shards, kind).all()):
            out[name] = full.view(shape)
    return out
