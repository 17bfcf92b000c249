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
from concurrent.futures import ThreadPoolExecutor

import torch

from trainer.config.ema import EmaConfig
from trainer.state.fragments import Fragment, assemble, held_fragments, is_sharded


def ema_decay(step: int, cfg: EmaConfig) -> float:
    """The lerp keep-weight d of the update after optimizer step ``step``: ema <- d*ema + (1-d)*w.
    ``step - start_step`` is the number of steps averaged so far; with warmup the first ones count
    more (TensorFlow's num_updates rule)."""
    t = step - cfg.start_step
    per_step = min(cfg.decay, (1 + t) / (10 + t)) if cfg.warmup else cfg.decay
    return per_step ** cfg.every


def is_update_step(step: int, cfg: EmaConfig) -> bool:
    return step > cfg.start_step and (step - cfg.start_step) % cfg.every == 0


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
        sharded = is_sharded(optimizer, orig_groups)
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
