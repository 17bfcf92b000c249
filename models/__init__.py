"""Model presets and builders (no distributed code here)."""

from models.builder import build_model, count_params, granite_config
from models.presets import PRESETS, resolve_preset

__all__ = ["PRESETS", "build_model", "count_params", "granite_config", "resolve_preset"]
