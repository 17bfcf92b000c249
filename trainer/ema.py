"""An EMA of the weights, kept in CPU memory and sharded exactly like the optimizer.

Under ZeRO-1/2 each rank's optimizer holds one flat fp32 partition per param group (the same
tensors ``trainer/optim/layout.py`` reads); the EMA keeps an fp32 copy of *those* slices only,
so every rank holds 1/W of it. Without ZeRO the optimizer holds whole parameters and so does the
EMA. One update, after an optimizer step that was not skipped::

    1. join the previous update (so at most one is in flight)
    2. on GPU: copy the held tensors device-to-host into pinned memory on a side stream, so the
       next step does not wait for it; on CPU they are read in place (no copy)
    3. in a background thread: wait for the copy, then ``ema.lerp_(held, 1 - d)``

``join()`` runs before the optimizer's next step (a pre-step hook: the held tensors must not change
under the lerp), the next update, an evaluation, a save and an export. The weight ``d``
comes from ``ema_decay`` (pure, tested): with ``every = k`` the per-step decay is compounded
(``d = decay_t ** k``), so ``every`` trades cost for nothing in averaging horizon.

Each slice's ``fragments`` (parameter name, start inside the parameter, length, start inside the
slice) say what it covers: ``assemble`` adds every rank's fragments into full tensors with one
all-reduce (EMA evaluation, export), and a checkpoint stores them beside the slices.

    >>> ema = ShardEMA.from_optimizer(client_optimizer, named_params, EmaConfig(decay=0.999))
    >>> ema.update(step)                           # after each optimizer step (asynchronous)
    >>> with ema.swapped_into(model): evaluate(model)   # raw weights restored bit-for-bit
"""

from __future__ import annotations

import contextlib
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trainer.configlib import ConfigError, doc


@dataclass
class EmaConfig:
    enabled: bool = doc("keep an exponential moving average of the weights (fp32, CPU, sharded like the "
                        "optimizer); evaluated as val/loss_ema and exported by default", False)
    decay: float = doc("EMA decay per optimizer step (horizon ~ 1 / (1 - decay) steps)", 0.999)
    every: int = doc("update the EMA every N optimizer steps; the decay is compounded (decay**N) so N changes "
                     "the cost, not the averaging horizon", 1)
    warmup: bool = doc("use decay_t = min(decay, (1 + t) / (10 + t)), t = steps since start_step, so early "
                       "weights are forgotten quickly; false: constant decay", True)
    start_step: int = doc("optimizer step at which the EMA starts as a copy of the weights (0: the initial "
                          "weights)", 0)

    def validate(self) -> None:
        if not (0.0 < self.decay < 1.0):
            raise ConfigError(f"ema.decay must be in (0, 1), e.g. 0.999; got {self.decay}")
        if self.every < 1:
            raise ConfigError(f"ema.every must be >= 1, got {self.every}")
        if self.start_step < 0:
            raise ConfigError(f"ema.start_step must be >= 0, got {self.start_step}")


def ema_decay(step: int, cfg: EmaConfig) -> float:
    """The lerp keep-weight d of the update after optimizer step ``step``: ema <- d*ema + (1-d)*w.
    ``step - start_step`` is the number of steps averaged so far; with warmup the first ones count
    more (TensorFlow's num_updates rule)."""
    t = step - cfg.start_step
    per_step = min(cfg.decay, (1 + t) / (10 + t)) if cfg.warmup else cfg.decay
    return per_step ** cfg.every


def is_update_step(step: int, cfg: EmaConfig) -> bool:
    return step > cfg.start_step and (step - cfg.start_step) % cfg.every == 0


Fragment = tuple[str, int, int, int]  # (param name, start in param, numel, start in held tensor)


def held_fragments(optimizer, orig_groups: list[list[torch.Tensor]], names: dict[int, str]) -> list[list[Fragment]]:
    """For every tensor the optimizer holds (group order), the parameter elements it covers.

    ``orig_groups`` are the groups' model params captured before ``accelerator.prepare``. Under
    ZeRO-1/2 a group holds one flat partition and each param links to its fragment of it through
    DeepSpeed's ``_hp_mapping`` (see ``trainer/optim/layout.py``); otherwise a group holds the
    params themselves, whole."""
    out = []
    for group, orig in zip(optimizer.param_groups, orig_groups):
        held = group["params"]
        if len(held) == 1 and held[0].ndim == 1 and not any(held[0] is p for p in orig):
            frags = []
            for p in orig:
                mapping = getattr(p, "_hp_mapping", None)
                if mapping is not None:
                    lp, hp = mapping.lp_fragment_address, mapping.hp_fragment_address
                    frags.append((names[id(p)], lp.start, lp.numel, hp.start))
            out.append(frags)
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


class ShardEMA:
    """The EMA of the tensors this rank's optimizer holds (see the module docstring)."""

    def __init__(self, sources: list[torch.Tensor], fragments: list[list[Fragment]], shapes: dict[str, tuple],
                 cfg: EmaConfig, sharded: bool):
        assert len(sources) == len(fragments)
        self.sources, self.fragments, self.shapes, self.cfg, self.sharded = sources, fragments, shapes, cfg, sharded
        on_gpu = bool(sources) and sources[0].is_cuda
        self.shadow = [torch.zeros(s.numel(), dtype=torch.float32, pin_memory=on_gpu) for s in sources]
        self._staging = [torch.empty(s.numel(), dtype=torch.float32, pin_memory=True)
                         for s in sources] if on_gpu else []
        self._stream = torch.cuda.Stream() if on_gpu else None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ema")
        self._pending = None
        self.initialized, self.updates = False, 0

    @classmethod
    def from_optimizer(cls, optimizer, orig_groups, named_params: dict[str, torch.Tensor], cfg: EmaConfig):
        names = {id(p): n for n, p in named_params.items()}
        sources = [p for g in optimizer.param_groups for p in g["params"]]
        fragments = held_fragments(optimizer, orig_groups, names)
        sharded = any(len(g["params"]) == 1 and not any(g["params"][0] is p for p in orig)
                      for g, orig in zip(optimizer.param_groups, orig_groups))
        ema = cls(sources, fragments, {n: tuple(p.shape) for n, p in named_params.items()}, cfg, sharded)
        # The update in flight may read the held tensors (on CPU, in place): finish it before the
        # optimizer writes them. Under ZeRO DeepSpeed calls step() per group; join() is idempotent.
        optimizer.register_step_pre_hook(lambda *_: ema.join())
        return ema

    # -- updates -------------------------------------------------------------------------------------
    def update(self, step: int) -> None:
        """Call after optimizer step ``step`` (0: before training). Starts, updates or does nothing."""
        if not self.initialized:
            if step >= self.cfg.start_step:
                self._launch(0.0)  # d = 0: the EMA starts as a copy of the weights
                self.initialized = True
        elif is_update_step(step, self.cfg):
            self._launch(ema_decay(step, self.cfg))

    def _launch(self, keep: float) -> None:
        self.join()
        if self._stream is None:  # CPU: read the held tensors in place; the optimizer's pre-step hook joins
            snapshots, event = [src.detach().reshape(-1) for src in self.sources], None
        else:  # GPU: device-to-host into pinned memory on a side stream, after the optimizer's writes
            self._stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._stream):
                for buf, src in zip(self._staging, self.sources):
                    buf.copy_(src.detach().reshape(-1), non_blocking=True)
                event = torch.cuda.Event()
                event.record()
            snapshots = self._staging
        self._pending = self._pool.submit(self._lerp, keep, snapshots, event)
        self.updates += 1

    def _lerp(self, keep: float, snapshots: list[torch.Tensor], event) -> None:
        if event is not None:
            event.synchronize()
        for shadow, snap in zip(self.shadow, snapshots):
            shadow.lerp_(snap, 1.0 - keep)

    def join(self) -> None:
        if self._pending is not None:
            self._pending.result()  # re-raises an error of the background update
            self._pending = None

    # -- full weights ----------------------------------------------------------------------------------
    def assemble(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Full fp32 EMA tensors by parameter name, on every rank. Collective when sharded."""
        self.join()
        return assemble(self.shadow, self.fragments, self.shapes, device, self.sharded)

    @contextlib.contextmanager
    def swapped_into(self, model: torch.nn.Module):
        """Evaluate ``model`` with the EMA weights; the raw weights come back bit-for-bit. Collective."""
        params = dict(model.named_parameters())
        device = next(iter(params.values())).device
        full = self.assemble(device)
        backup = {n: params[n].detach().clone() for n in full}
        with torch.no_grad():
            for n, t in full.items():
                params[n].copy_(t)
        try:
            yield model
        finally:
            with torch.no_grad():
                for n, t in backup.items():
                    params[n].copy_(t)

    # -- checkpoint ------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        self.join()
        return {"shadow": [t.clone() for t in self.shadow], "fragments": self.fragments,
                "initialized": self.initialized, "updates": self.updates}

    def load_state_dict(self, sd: dict) -> None:
        self.join()
        if [list(map(tuple, f)) for f in sd["fragments"]] != [list(map(tuple, f)) for f in self.fragments]:
            raise ValueError("the checkpoint's EMA shards cover other parameter ranges than this run's optimizer "
                             "partitions (another world size or ZeRO stage); resume with the original layout")
        for dst, src in zip(self.shadow, sd["shadow"]):
            dst.copy_(src)
        self.initialized, self.updates = sd["initialized"], sd["updates"]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.shadow)

    def all_finite(self) -> bool:
        self.join()
        return all(bool(t.isfinite().all()) for t in self.shadow)

    def close(self) -> None:
        self.join()
        self._pool.shutdown(wait=True)
