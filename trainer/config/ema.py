"""``ema.*``: the EMA of the weights (what it does: ``trainer/state/ema.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.base import ConfigError, doc


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
