"""Where each Muon matrix lives in the tensors an optimizer param group actually holds.

Without DeepSpeed a group holds the parameters themselves: every matrix is whole, one piece each.
Under ZeRO-1/2 DeepSpeed replaces the group's params by ONE flat fp32 partition per rank and
links every model parameter to its fragment of that partition (``trainer/state/fragments.py``
reads those links: ``param_fragment``). A matrix
whose elements cross a partition boundary ("straddler") is held in pieces by 2+ ranks.

``zero_layout`` reads those mappings once, exchanges them (one ``all_gather_object`` at bind
time), and gives every rank the same ordered list of straddlers, so the per-step exchange is one
fixed-size collective that every rank reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.state.fragments import param_fragment


def matrix_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """A >= 2-D parameter seen as a matrix: (fan_out, everything else), e.g. a conv (O, I, kh, kw)
    becomes (O, I*kh*kw)."""
    assert len(shape) >= 2, f"Muon needs >= 2-D parameters, got shape {tuple(shape)}"
    rest = 1
    for d in shape[1:]:
        rest *= d
    return int(shape[0]), int(rest)


@dataclass(frozen=True)
class Piece:
    """One contiguous run of one matrix held by this rank.

    held: index of the tensor in ``group["params"]``; offset: start inside that tensor (flat);
    start: start inside the matrix (flat); numel: length; shape: the matrix's 2-D shape;
    comm_offset: start of the whole matrix in the straddler buffer, None if held whole here."""
    held: int
    offset: int
    start: int
    numel: int
    shape: tuple[int, int]
    comm_offset: int | None = None


@dataclass
class GroupLayout:
    pieces: list[Piece]  # this rank's pieces, in group order
    comm_numel: int = 0  # size of the straddler buffer, identical on every rank (0: no collective)
    group: object = None  # process group of the exchange (None: no exchange)

    @property
    def sharded(self) -> bool:
        return self.group is not None


def whole_layout(params: list[torch.Tensor]) -> GroupLayout:
    """1 process or DDP: every param is one whole matrix. Params without a gradient are skipped."""
    return GroupLayout([Piece(i, 0, 0, p.numel(), matrix_shape(p.shape))
                        for i, p in enumerate(params) if p.grad is not None])


def zero_layout(orig_params: list[torch.Tensor], flat: torch.Tensor) -> GroupLayout:
    """The layout of a ZeRO-1/2 flat partition ``flat`` (this group's ``params[0]``).

    ``orig_params`` are the group's model params in the order the group was built (DeepSpeed keeps
    it). Collective: every rank of the data-parallel group must call it for the same group."""
    group = getattr(orig_params[0], "_dp_group", None)
    local = []  # (param index, start in matrix, numel, offset in flat)
    for i, p in enumerate(orig_params):
        if (fragment := param_fragment(p, flat)) is not None:
            local.append((i, *fragment))
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, local, group=group)

    held_numel: dict[int, int] = {}
    for rank_pieces in everyone:
        for i, _, numel, _ in rank_pieces:
            held_numel[i] = held_numel.get(i, 0) + numel
    comm_offsets, comm_numel = {}, 0
    for i in sorted(held_numel):  # same order on every rank: by position in the group
        assert held_numel[i] == orig_params[i].numel(), f"param {i}: ranks hold {held_numel[i]} elements"
        if any(numel < orig_params[i].numel() for rp in everyone for j, _, numel, _ in rp if j == i):
            comm_offsets[i], comm_numel = comm_numel, comm_numel + orig_params[i].numel()
    pieces = [Piece(0, off, start, numel, matrix_shape(orig_params[i].shape), comm_offsets.get(i))
              for i, start, numel, off in local]
    return GroupLayout(pieces, comm_numel, group if group is not None else dist.group.WORLD)
