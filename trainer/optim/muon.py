"""ShardedMuon: Muon for hidden matrices + AdamW for the rest, in one torch optimizer, ZeRO-aware.

One class covers both layouts (see ``layout.py``):

* whole-param mode (1 process, DDP): groups hold the parameters; matches ``torch.optim.Muon``
  step for step when configured alike (same Newton-Schulz dtype).
* ZeRO-1/2 mode: after ``accelerator.prepare`` DeepSpeed hands each group to ``step()`` as one flat
  fp32 partition per rank. Momentum is elementwise, so it lives on that slice only (exactly 1/W of
  the unsharded state). Matrices held whole are orthogonalized locally; only matrices straddling a
  partition boundary are exchanged. Each group keeps its own lr / weight decay (muP).

The layout is discovered lazily on the first ``step()``; the training loop needs no extra call.

    >>> opt = ShardedMuon([dict(params=hidden, kind="muon", lr=0.02, name="hidden"),
    ...                    dict(params=rest, kind="adamw", lr=3e-3, name="rest")])
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from trainer.optim.exchange import from_owners, to_owners
from trainer.optim.layout import GroupLayout, matrix_shape, whole_layout, zero_layout
from trainer.optim.orthogonalize import NS_METHODS, orthogonalize_batched
from trainer.state.fragments import is_flat_partition

NS_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16}


def muon_update(grad: torch.Tensor, momentum: torch.Tensor, beta: float, nesterov: bool) -> torch.Tensor:
    """Momentum (in place) and the direction to orthogonalize; elementwise, so it works on any slice.
    m = beta*m + (1-beta)*g; Nesterov looks ahead: u = (1-beta)*g + beta*m (torch.optim.Muon's form)."""
    momentum.lerp_(grad, 1 - beta)
    return grad.lerp(momentum, beta) if nesterov else momentum


def muon_scale(shape: tuple[int, int], mode: str) -> float:
    """Per-matrix update scale (torch.optim.Muon's ``adjust_lr_fn``). 'original' (Jordan):
    sqrt(max(1, A/B)); 'match_rms_adamw' (Moonlight, arXiv 2502.16982): 0.2*sqrt(max(A, B)), which
    gives the update the RMS of a typical AdamW update so AdamW lr and weight decay carry over."""
    A, B = shape
    if mode == "original":
        return math.sqrt(max(1, A / B))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    raise ValueError(f"Muon scale must be 'original' or 'match_rms_adamw', got {mode!r}")


def adam_update(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                step: int, lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """AdamW (Loshchilov & Hutter), in place, with torch.optim.AdamW's op order (single-tensor path)."""
    beta1, beta2 = betas
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** step)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


class ShardedMuon(torch.optim.Optimizer):
    """Muon groups (``kind="muon"``: lr, momentum, nesterov, ns_steps, scale, weight_decay, ns_dtype,
    and optionally ``matrices``: each param's split ``(count, (rows, cols))``, default one matrix seen
    as ``matrix_shape``; see ``optim/matrices.py``) and AdamW groups (``kind="adamw"``: lr, betas, eps,
    weight_decay) in one optimizer.

    Every group gets a unique ``name`` (default ``group<i>``): it identifies the group across
    DeepSpeed's flattening and ``load_state_dict``. Never tag params with ``use_muon``: DeepSpeed
    reads that attribute and would run its own Newton-Schulz inside the gradient partitioning."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 ns_steps: int = 5, scale: str = "original", weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, ns_dtype: str = "auto"):
        defaults = dict(kind="muon", lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        scale=scale, weight_decay=weight_decay, betas=tuple(betas), eps=eps, ns_dtype=ns_dtype)
        super().__init__(params, defaults)
        self._registered: dict[str, list[torch.Tensor]] = {}
        self._splits: dict[int, tuple] = {}  # id(param) -> its split into matrices (optim/matrices.py)
        self._layouts: dict[str, GroupLayout] = {}
        for i, group in enumerate(self.param_groups):
            name = group.setdefault("name", f"group{i}")
            splits = group.pop("matrices", None)
            if name in self._registered:
                raise ValueError(f"ShardedMuon: two param groups are named {name!r}; names must be unique")
            if group["kind"] not in ("muon", "adamw"):
                raise ValueError(f"ShardedMuon: group {name!r} has kind {group['kind']!r}; use 'muon' or 'adamw'")
            if group["kind"] == "muon":
                muon_scale((1, 1), group["scale"])  # validates the mode
                if group["ns_dtype"] not in NS_DTYPES:
                    raise ValueError(f"ShardedMuon: ns_dtype must be one of {list(NS_DTYPES)}")
                if group.setdefault("ns_method", "quintic") not in NS_METHODS:
                    raise ValueError(f"ShardedMuon: ns_method must be one of {list(NS_METHODS)}")
                bad = [tuple(p.shape) for p in group["params"] if p.ndim < 2]
                if bad:
                    raise ValueError(f"ShardedMuon: Muon group {name!r} holds params of shape {bad}; "
                                     "put 1-D params (gains, biases) in an AdamW group")
                splits = splits or [(1, matrix_shape(p.shape)) for p in group["params"]]
                self._splits.update({id(p): tuple(s) for p, s in zip(group["params"], splits)})
            self._registered[name] = [p for p in group["params"] if p.requires_grad]

    def _layout(self, group: dict) -> GroupLayout:
        """Whole params, or (first time a ZeRO flat partition is seen) its cached ZeRO layout.
        AdamW groups need no matrix layout, only whether they are sharded (and over which group)."""
        held, registered = group["params"], self._registered[group["name"]]
        if not is_flat_partition(held, registered):
            return whole_layout(held, [self._splits[id(p)] for p in held]) if group["kind"] == "muon" \
                else GroupLayout([])
        if group["name"] not in self._layouts:
            if group["kind"] == "muon":  # collective, once per group
                splits = [self._splits[id(p)] for p in registered]
                self._layouts[group["name"]] = zero_layout(registered, held[0], splits)
            else:
                dp_group = getattr(registered[0], "_dp_group", None)
                self._layouts[group["name"]] = GroupLayout([], group=dp_group or dist.group.WORLD)
        return self._layouts[group["name"]]

    @torch.no_grad()
    def step(self, closure=None):
        """One optimizer step over the groups in ``self.param_groups`` (under ZeRO DeepSpeed calls
        this once per group, showing one group at a time, in the same order on every rank).

        1. Layout: whole params, or the ZeRO flat partition's layout (learned once, collectively).
        2. Skip: if any gradient is non-finite (agreed by all ranks under ZeRO), return with
           parameters and state untouched. Under ZeRO with fp32 (or fp16) DeepSpeed's global-norm
           check already skips the whole step before calling us; ours is the fallback (bf16
           without check_grad_overflow), and since DeepSpeed shows one group per call it skips
           per group there.
        3. AdamW groups: elementwise on what they hold.
        4. Muon momentum on what is held (whole params or this rank's slice).
        5. Straddlers (matrices a partition boundary cuts; for an expert stack only the expert slices
           it cuts) go to their owner (``exchange.py``): the holders send their pieces, point to
           point. Matrices held whole are never communicated; a rank moves at most two straddlers'
           bytes per group, whatever W.
        6. Orthogonalize (``optim.ns_method``, ``orthogonalize.py``), batched by shape: the matrices
           this rank holds whole and the straddlers it owns; each owner sends every holder back its
           slice.
        7. Apply to the held slice: decoupled weight decay, per-matrix scale, the group's lr.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # 1. Layout
        layouts = [self._layout(group) for group in self.param_groups]

        # 2. Skip on non-finite gradients
        if not self._grads_finite(layouts):
            return loss

        for group, layout in zip(self.param_groups, layouts):
            if group["kind"] == "adamw":
                self._adamw_group(group)  # 3. AdamW groups
            else:
                self._muon_group(group, layout)
        return loss

    def _grads_finite(self, layouts: list[GroupLayout]) -> bool:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        finite = torch.stack([g.isfinite().all() for g in grads]).all() if grads else torch.tensor(True)
        sharded = [lay for lay in layouts if lay.sharded]
        if sharded:  # a slice's verdict must be everyone's, or ranks would diverge
            flag = finite.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=sharded[0].group)
            return bool(flag.item())
        return bool(finite.item())

    def _adamw_group(self, group: dict) -> None:
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            adam_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], group["lr"],
                        group["betas"], group["eps"], group["weight_decay"])

    def _muon_group(self, group: dict, layout: GroupLayout) -> None:
        held = group["params"]
        # 4. Momentum on what is held
        directions = {}
        for i, p in enumerate(held):
            if p.grad is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            directions[i] = muon_update(p.grad, state["momentum_buffer"], group["momentum"],
                                        group["nesterov"]).view(-1)

        # 5. Straddlers to their owners (every holder of a piece takes part)
        owned = to_owners(layout, directions) if layout.straddlers else {}
        whole = [j for j, pc in enumerate(layout.pieces) if pc.straddler is None]
        matrices = [directions[layout.pieces[j].held][layout.pieces[j].offset:][:layout.pieces[j].numel]
                    .view(layout.pieces[j].shape) for j in whole]
        matrices += [owned[n].view(layout.straddlers[n].shape) for n in sorted(owned)]

        # 6. Orthogonalize, batched by shape: this rank's whole matrices and the straddlers it owns
        ortho = orthogonalize_batched(matrices, group["ns_steps"], NS_DTYPES[group["ns_dtype"]],
                                      group.get("ns_method", "quintic"))
        updates = {j: O.reshape(-1) for j, O in zip(whole, ortho)}
        if layout.straddlers:  # each holder's slice back from the owner
            updates.update(from_owners(layout, {n: O.reshape(-1) for n, O in zip(sorted(owned), ortho[len(whole):])},
                                       held[0]))

        # 7. Apply: weight decay, scale, lr
        lr, wd = group["lr"], group["weight_decay"]
        if wd:
            for i in directions:
                held[i].mul_(1 - lr * wd)
        for j, pc in enumerate(layout.pieces):
            target = held[pc.held].view(-1)[pc.offset:][:pc.numel]
            update = updates[j] if pc.straddler is not None else updates[j][pc.start:][:pc.numel]
            target.add_(update, alpha=-lr * muon_scale(pc.shape, group["scale"]))

