"""Optimizer section of the config (``optim.*``)."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.base import ConfigError, doc


@dataclass
class OptimConfig:
    name: str = doc("muon (Muon on hidden matrices + AdamW on the rest) or adamw (AdamW everywhere)", "muon")
    lr: float = doc("Muon learning rate for hidden matrices (base width under muP)", 0.02)
    momentum: float = doc("Muon momentum beta", 0.95)
    nesterov: bool = doc("Nesterov momentum for Muon", True)
    ns_steps: int = doc("Newton-Schulz iterations per Muon step", 5)
    ns_method: str = doc("orthogonalization: quintic (Jordan's, as torch.optim.Muon), polar_express (per-step "
                         "minimax coefficients), gram (the quintic on the Gram matrix: fewer FLOPs on wide "
                         "matrices), gram_polar_express (both); see BENCHMARKS.md", "quintic")
    scale: str = doc("Muon update scale: original (max(1,A/B)**0.5) or match_rms_adamw (0.2*sqrt(max(A,B)))",
                     "match_rms_adamw")
    weight_decay: float = doc("decoupled weight decay for Muon matrices", 0.0)
    ns_dtype: str = doc("Newton-Schulz matmul dtype: auto (bf16 on GPU, fp32 on CPU), bf16 or fp32", "auto")
    adamw_lr: float = doc("AdamW learning rate (embeddings, readout, gains; every param when name=adamw)", 3e-3)
    adamw_betas: list[float] = doc("AdamW betas", default_factory=lambda: [0.9, 0.95])
    adamw_eps: float = doc("AdamW epsilon", 1e-8)
    adamw_weight_decay: float = doc("AdamW decoupled weight decay (not applied to gains/biases)", 0.0)

    def validate(self) -> None:
        if self.name not in ("muon", "adamw"):
            raise ConfigError(f"optim.name must be 'muon' or 'adamw', got {self.name!r}")
        if self.scale not in ("original", "match_rms_adamw"):
            raise ConfigError(f"optim.scale must be 'original' or 'match_rms_adamw', got {self.scale!r}")
        if len(self.adamw_betas) != 2 or not all(0 <= b < 1 for b in self.adamw_betas):
            raise ConfigError(f"optim.adamw_betas must be two numbers in [0, 1), got {self.adamw_betas}")
        for key in ("lr", "adamw_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"optim.{key} must be > 0, got {getattr(self, key)}")
        for key in ("weight_decay", "adamw_weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"optim.{key} must be >= 0, got {getattr(self, key)}")
        if not self.adamw_eps > 0:
            raise ConfigError(f"optim.adamw_eps must be > 0, got {self.adamw_eps}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"optim.momentum must be in [0, 1), got {self.momentum}")
        if self.ns_dtype not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"optim.ns_dtype must be auto, bf16 or fp32, got {self.ns_dtype!r}")
        methods = ("quintic", "polar_express", "gram", "gram_polar_express")  # trainer/optim/orthogonalize.py
        if self.ns_method not in methods:
            raise ConfigError(f"optim.ns_method must be one of {', '.join(methods)}, got {self.ns_method!r}")
        if self.ns_steps < 1:
            raise ConfigError(f"optim.ns_steps must be >= 1, got {self.ns_steps}")
