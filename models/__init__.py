"""Model presets and builders (no distributed code here)."""

from models.builder import build_model, count_params, granite_config, padded_vocab
from models.convert import SUPPORTED_TYPES, arch_of, as_granite_config
from models.presets import PRESETS, resolve_preset

__all__ = ["PRESETS", "SUPPORTED_TYPES", "arch_of", "as_granite_config", "build_model", "count_params",
           "granite_config", "padded_vocab", "resolve_preset"]
