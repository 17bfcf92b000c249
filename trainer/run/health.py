"""Training health: skipped non-finite steps and loss spikes.

A step whose loss or gradient norm is not finite is skipped (no optimizer, scheduler or EMA
update; DeepSpeed's own overflow check and ``ShardedMuon`` leave the weights untouched). A run
that keeps producing them has diverged: after ``train.max_skipped`` consecutive skips it stops
with ``EXIT_DIVERGED`` and writes no new checkpoint. A loss that stays above ``spike_factor`` x
its running mean for ``spike_steps`` steps gets one warning.

    >>> health = Health(max_skipped=10, spike_factor=3.0, spike_steps=5)
    >>> verdict = health.observe(loss, grad_norm)   # "ok", "skip" or "diverged"
"""

from __future__ import annotations

import math


class Health:
    def __init__(self, max_skipped: int, spike_factor: float = 3.0, spike_steps: int = 5, mean_decay: float = 0.9):
        self.max_skipped, self.spike_factor, self.spike_steps, self.mean_decay = (
            max_skipped, spike_factor, spike_steps, mean_decay)
        self.skipped = 0  # total, for train/skipped_steps
        self.overflows = 0  # fp16 steps the loss scaler skipped (train/overflow_steps): not divergence
        self.consecutive = 0
        self.running_mean: float | None = None
        self._above = 0
        self.spike_warned = False

    def observe(self, loss: float, grad_norm: float | None, overflow: bool = False) -> str:
        """Classify one step: "ok", "skip" (non-finite) or "diverged" (too many skips in a row); an fp16
        step whose scaled gradients overflowed is "overflow": skipped, the scale lowered, and not a step
        towards divergence (the loss was finite; the next, smaller scale fits)."""
        if overflow:
            self.overflows += 1
            return "overflow"
        if not math.isfinite(loss) or (grad_norm is not None and not math.isfinite(grad_norm)):
            self.skipped += 1
            self.consecutive += 1
            return "diverged" if self.consecutive >= self.max_skipped else "skip"
        self.consecutive = 0
        return "ok"

    def spike(self, loss: float) -> bool:
        """True exactly once: the first time the loss has stayed above the threshold long enough.
        Spiking losses are kept out of the running mean, so a long spike cannot raise its own bar."""
        if self.running_mean is not None and self.spike_steps and loss > self.spike_factor * self.running_mean:
            self._above += 1
            if self._above >= self.spike_steps and not self.spike_warned:
                self.spike_warned = True
                return True
            return False
        self._above = 0
        m = self.running_mean
        self.running_mean = loss if m is None else self.mean_decay * m + (1 - self.mean_decay) * loss
        return False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive, "running_mean": self.running_mean,
                "overflows": self.overflows}

    def load_state_dict(self, sd: dict) -> None:
        self.skipped, self.consecutive, self.running_mean = sd["skipped"], sd["consecutive"], sd["running_mean"]
        self.overflows = sd.get("overflows", 0)
