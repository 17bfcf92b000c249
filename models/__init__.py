"""Model presets and builders (no distributed code here)."""

from models.builder import build_model, count_params, granite_config, padded_vocab
from models.presets import PRESETS, resolve_preset

__all__ = ["PRESETS", "build_model", "count_params", "granite_config", "padded_vocab", "resolve_preset"]
