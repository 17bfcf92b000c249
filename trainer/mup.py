"""muP: width multipliers, structural parameter classes, init and per-group learning rates."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.configlib import ConfigError, doc


@dataclass
class MupConfig:
    enabled: bool = doc("use muP init, multipliers and per-group lr scaling", False)
    base_width: int = doc("width at which learning rates were tuned (width_mult = d_model / base_width)", 128)

    def validate(self) -> None:
        if self.base_width < 1:
            raise ConfigError(f"mup.base_width must be >= 1, got {self.base_width}")


def classify_params(model) -> dict[str, str]:
    """Name -> muP class from the model's structure, never from names:
    'embedding' (get_input_embeddings), 'readout' (get_output_embeddings, unless tied to the
    embedding), 'vector' (1-D gains and biases), 'hidden' (every other >= 2-D matrix)."""
    emb = model.get_input_embeddings().weight
    out_mod = model.get_output_embeddings()
    readout = out_mod.weight if out_mod is not None else None
    classes = {}
    for name, p in model.named_parameters():  # a tied readout is yielded once, as the embedding
        if p is emb:
            classes[name] = "embedding"
        elif readout is not None and p is readout:
            classes[name] = "readout"
        elif p.ndim < 2:
            classes[name] = "vector"
        else:
            classes[name] = "hidden"
    return classes


def width_mult(d_model: int, cfg: MupConfig) -> float:
    return d_model / cfg.base_width if cfg.enabled else 1.0


def lr_multiplier(cls: str, kind: str, wmult: float, muon_scale: str = "original") -> float:
    """Factor on the group's base lr for muP class ``cls`` optimized by ``kind`` (muon|adamw).

    AdamW (Yang et al. Tensor Programs V, table 3): hidden and readout lr / width_mult,
    embeddings and vectors constant. Muon's 'original' scale already gives updates of
    spectral norm ~sqrt(fan_out/fan_in) (the muP spectral condition), so its lr is
    width-independent; 'match_rms_adamw' behaves like Adam and takes 1 / width_mult."""
    if kind == "muon":
        return 1.0 if muon_scale == "original" else 1.0 / wmult
    return 1.0 / wmult if cls in ("hidden", "readout") else 1.0
