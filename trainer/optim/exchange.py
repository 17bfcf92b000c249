"""The straddler exchange: every matrix cut by a ZeRO partition boundary is orthogonalized once, by
its owner (``layout.py`` chooses it), in two rounds of point-to-point messages per step.

1. ``to_owners``: each holder sends its piece of the momentum direction to the owner, which puts the
   pieces (its own included) together into the whole matrix.
2. (the owner orthogonalizes its matrices with its whole ones, batched by shape)
3. ``from_owners``: the owner sends each holder back only its slice of the result.

A rank that holds no piece of a straddler sends and receives nothing for it, and since a rank's flat
partition is contiguous it holds pieces of at most two straddlers per group: the bytes a rank moves
per step do not grow with the number of ranks (``scripts/bench/straddlers.py`` has the figures).
Megatron's LayerShardedMuon, torchtitan's DistributedMuon and DeepSpeed's ZeRO-3 Muon give each
matrix one owner the same way; the exchange before this one all-reduced a buffer of every
straddler of the group on every rank, which grew with W.

Messages are tagged with the straddler's index; every rank posts its operations in the same order,
so the pairs match on any backend (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trainer.optim.layout import GroupLayout


def _peer(layout: GroupLayout, rank: int) -> int:
    """A rank of the layout's group as the global rank point-to-point operations take."""
    return rank if layout.group in (None, dist.group.WORLD) else dist.get_global_rank(layout.group, rank)


def _run(ops: list) -> None:
    if ops:
        for work in dist.batch_isend_irecv(ops):
            work.wait()


def to_owners(layout: GroupLayout, directions: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Round 1: {straddler index: its whole flat matrix} for the straddlers this rank owns; sends this
    rank's pieces of the others' straddlers to their owners. Collective over the holders."""
    ops, owned = [], {}
    for pc in layout.pieces:
        if pc.straddler is None:
            continue
        st, piece = layout.straddlers[pc.straddler], directions[pc.held][pc.offset:][:pc.numel]
        if st.owner == layout.rank:
            owned[pc.straddler] = buf = torch.zeros(st.shape[0] * st.shape[1], dtype=piece.dtype, device=piece.device)
            buf[pc.start:][:pc.numel] = piece
        else:
            ops.append(dist.P2POp(dist.isend, piece.contiguous(), _peer(layout, st.owner), layout.group, pc.straddler))
    for n in sorted(owned):
        for rank, start, numel in layout.straddlers[n].holders:
            if rank != layout.rank:
                ops.append(dist.P2POp(dist.irecv, owned[n][start:][:numel], _peer(layout, rank), layout.group, n))
    _run(ops)
    return owned


def from_owners(layout: GroupLayout, results: dict[int, torch.Tensor], like: torch.Tensor) -> dict[int, torch.Tensor]:
    """Round 3: each holder's slice of every orthogonalized straddler; ``results`` are this rank's
    owned ones (flat), sent in ``like``'s dtype. Returns {piece index in ``layout.pieces``: this rank's
    slice} for every piece of a straddler, whether this rank owns it or received it."""
    ops, slices = [], {}
    results = {n: flat.to(like.dtype) for n, flat in results.items()}
    for n, flat in sorted(results.items()):
        for rank, start, numel in layout.straddlers[n].holders:
            if rank != layout.rank:
                ops.append(dist.P2POp(dist.isend, flat[start:][:numel].contiguous(), _peer(layout, rank),
                                      layout.group, n))
    for j, pc in enumerate(layout.pieces):
        if pc.straddler is None:
            continue
        owner = layout.straddlers[pc.straddler].owner
        if owner == layout.rank:
            slices[j] = results[pc.straddler][pc.start:][:pc.numel]
        else:
            slices[j] = torch.empty(pc.numel, dtype=like.dtype, device=like.device)
            ops.append(dist.P2POp(dist.irecv, slices[j], _peer(layout, owner), layout.group, pc.straddler))
    _run(ops)
    return slices
