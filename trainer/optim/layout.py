"""Where each Muon matrix lives in the tensors an optimizer param group actually holds.

Without DeepSpeed a group holds the parameters themselves: every matrix is whole, one piece each.
Under ZeRO-1/2 DeepSpeed replaces the group's params by ONE flat fp32 partition per rank and
links every model parameter to its fragment of that partition (``trainer/state/fragments.py``
reads those links: ``param_fragment``). A matrix
whose elements cross a partition boundary ("straddler") is held in pieces by 2+ ranks.

A parameter is one or more matrices (``matrices.py``: a Linear one, a MoE expert stack one per
expert); a piece is a contiguous run of one of them. ``zero_layout`` reads those mappings once and
exchanges them (one ``all_gather_object`` at bind time); ``layout_from_fragments`` then gives every
rank the same list of straddling matrices, each with one *owner*: a rank holding a piece of it,
chosen so that the Newton-Schulz FLOPs of each rank (its whole matrices plus what it owns) are as
even as a greedy assignment makes them. Per step the other holders send their pieces to the owner,
which orthogonalizes the matrix once and sends each holder back its slice (``exchange.py``); a
rank holding no piece of a straddler sends and receives nothing for it. A rank's flat partition is
contiguous, so it holds pieces of at most two straddlers per group: the bytes it moves per step are
bounded by two matrices, whatever the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from trainer.optim.newton_schulz import newton_schulz_flops
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
    straddler: index into ``GroupLayout.straddlers``, None when this rank holds the matrix whole."""
    held: int
    offset: int
    start: int
    numel: int
    shape: tuple[int, int]
    straddler: int | None = None


@dataclass(frozen=True)
class Straddler:
    """A matrix held in pieces by several ranks: its shape, the rank (in the group) that orthogonalizes
    it, and every holder's (rank, start in the matrix, numel), in rank order."""
    shape: tuple[int, int]
    owner: int
    holders: tuple[tuple[int, int, int], ...]


@dataclass
class GroupLayout:
    pieces: list[Piece]  # this rank's pieces, in group order
    straddlers: list[Straddler] = field(default_factory=list)  # identical on every rank
    group: object = None  # process group of the exchange (None: no exchange)
    rank: int = 0  # this rank's index in ``group``

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
    it), ``splits`` their splits into matrices. Collective: every rank of the data-parallel group
    must call it for the same group."""
    group = getattr(orig_params[0], "_dp_group", None)
    local = []  # (param index, start in param, numel, offset in flat)
    for i, p in enumerate(orig_params):
        if (fragment := param_fragment(p, flat)) is not None:
            local.append((i, *fragment))
    everyone: list = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, local, group=group)
    layout = layout_from_fragments(everyone, dist.get_rank(group), splits, [p.numel() for p in orig_params])
    layout.group = group if group is not None else dist.group.WORLD
    return layout


def layout_from_fragments(everyone: list[list[tuple]], rank: int, splits: list, numels: list[int]) -> GroupLayout:
    """Rank ``rank``'s layout from every rank's fragments ``(param index, start in param, numel,
    offset in flat)`` (pure: ``scripts/bench/straddlers.py`` feeds it simulated partitions)."""
    held_numel: dict[int, int] = {}
    parts: dict[tuple[int, int], list] = {}  # (param, matrix) -> [(rank, start in matrix, numel)]
    for r, rank_pieces in enumerate(everyone):
        for i, start, numel, _ in rank_pieces:
            held_numel[i] = held_numel.get(i, 0) + numel
            size = splits[i][1][0] * splits[i][1][1]
            for k, lo, n in _units(splits[i], start, numel):
                parts.setdefault((i, k), []).append((r, lo - k * size, n))
    for i, numel in held_numel.items():
        assert numel == numels[i], f"param {i}: ranks hold {numel} elements of {numels[i]}"
    cut = sorted(key for key, holders in parts.items() if len(holders) > 1)  # same order on every rank
    owners = assign_owners([splits[i][1] for i, _ in cut], [[h[0] for h in parts[key]] for key in cut],
                           _whole_flops(parts, splits, len(everyone)))
    straddlers = [Straddler(splits[i][1], owner, tuple(parts[i, k])) for (i, k), owner in zip(cut, owners)]
    index = {key: n for n, key in enumerate(cut)}
    pieces = []
    for i, start, numel, off in everyone[rank]:
        shape = splits[i][1]
        for k, lo, n in _units(splits[i], start, numel):
            pieces.append(Piece(0, off + lo - start, lo - k * shape[0] * shape[1], n, shape, index.get((i, k))))
    return GroupLayout(pieces, straddlers, rank=rank)


def _whole_flops(parts: dict, splits: list, world: int) -> list[float]:
    """Each rank's Newton-Schulz FLOPs on the matrices it holds whole."""
    load = [0.0] * world
    for (i, _), holders in parts.items():
        if len(holders) == 1:
            load[holders[0][0]] += newton_schulz_flops(splits[i][1])
    return load


def assign_owners(shapes: list[tuple[int, int]], holders: list[list[int]], load: list[float]) -> list[int]:
    """An owner for each straddler among its holders: largest matrices first, each to the holder with
    the least Newton-Schulz FLOPs so far (``load``: each rank's own matrices; ties to the lower rank)."""
    load, owners = list(load), [0] * len(shapes)
    for n in sorted(range(len(shapes)), key=lambda n: -newton_schulz_flops(shapes[n])):
        owners[n] = min(holders[n], key=lambda r: (load[r], r))
        load[owners[n]] += newton_schulz_flops(shapes[n])
    return owners
