"""Where each Muon matrix lives in the tensors an optimizer param group actually holds.

Without DeepSpeed a group holds the parameters themselves: every matrix is whole, one piece each.
Under ZeRO-1/2 DeepSpeed replaces the group's params by ONE flat fp32 partition per rank and
links every model parameter to its fragment of that partition (``trainer/state/fragments.py``
reads those links: ``param_fragment``). A matrix
whose elements cross a partition boundary ("straddler") is held in pieces by 2+ ranks.

A parameter is one or more matrices (``matrices.py``: a Linear one, a MoE expert stack one per
expert); a piece is a contiguous run of one of them. ``zero_layout`` reads those mappings once,
exchanges them (one ``all_gather_object`` at bind time), and gives every rank the same ordered
list of straddling matrices, so the per-step exchange is one fixed-size collective that every rank
reaches.
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


def _units(split, start: int, numel: int):
    """The matrices of a parameter split as ``split`` that the run [start, start + numel) of its
    flattened elements overlaps: (matrix index, overlap start inside the parameter, overlap length)."""
    _, (a, b) = split
    size = a * b
    for k in range(start // size, (start + numel - 1) // size + 1):
        lo, hi = max(start, k * size), min(start + numel, (k + 1) * size)
        yield k, lo, hi - lo


def whole_layout(params: list[torch.Tensor], splits: list) -> GroupLayout:
    """1 process or DDP: every param is whole, one piece per matrix of its split (``matrices.py``).
    Params without a gradient are skipped."""
    pieces = []
    for i, p in enumerate(params):
        if p.grad is not None:
            count, shape = splits[i]
            pieces += [Piece(i, k * shape[0] * shape[1], 0, shape[0] * shape[1], shape) for k in range(count)]
    return GroupLayout(pieces)


def zero_layout(orig_params: list[torch.Tensor], flat: torch.Tensor, splits: list) -> GroupLayout:
    """The layout of a ZeRO-1/2 flat partition ``flat`` (this group's ``params[0]``).

    ``orig_params`` are the group's model params in the order the group was built (DeepSpeed keeps
    it), ``splits`` their splits into matrices. A matrix is a straddler when some rank holds only part
    of it: for an expert stack that is the one expert slice a partition boundary cuts, never the
    whole stack. Collective: every rank of the data-parallel group must call it for the same group."""
    group = getattr(orig_params[0], "_dp_group", None)
    local = []  # (param index, start in param, numel, offset in flat)
    for i, p in enumerate(orig_params):
        if (fragment := param_fragment(p, flat)) is not None:
            local.append((i, *fragment))
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, local, group=group)

    held_numel: dict[int, int] = {}
    straddling = set()  # (param index, matrix index) held in part by some rank
    for rank_pieces in everyone:
        for i, start, numel, _ in rank_pieces:
            held_numel[i] = held_numel.get(i, 0) + numel
            size = splits[i][1][0] * splits[i][1][1]
            straddling |= {(i, k) for k, _, n in _units(splits[i], start, numel) if n < size}
    for i, numel in held_numel.items():
        assert numel == orig_params[i].numel(), f"param {i}: ranks hold {numel} elements"
    comm_offsets, comm_numel = {}, 0
    for i, k in sorted(straddling):  # same order on every rank
        comm_offsets[i, k], comm_numel = comm_numel, comm_numel + splits[i][1][0] * splits[i][1][1]
    pieces = []
    for i, start, numel, off in local:
        shape = splits[i][1]
        for k, lo, n in _units(splits[i], start, numel):
            pieces.append(Piece(0, off + lo - start, lo - k * shape[0] * shape[1], n, shape, comm_offsets.get((i, k))))
    return GroupLayout(pieces, comm_numel, group if group is not None else dist.group.WORLD)
