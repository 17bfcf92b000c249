"""Model presets and builders (no distributed code here).

The names below load on first use (PEP 562), so that reading a preset (``models.presets``, what
``scaleout train``'s checks before launch need) does not import transformers' model code."""

import importlib

_WHERE = {"build_model": "models.builder", "count_params": "models.builder", "active_params": "models.builder",
          "MOE_TYPES": "models.presets", "resolve_moe": "models.presets", "granite_config": "models.builder",
          "padded_vocab": "models.builder",
          "TYPES": "models.presets", "MUP_TYPES": "models.presets", "model_config": "models.builder",
          "load_model_config": "models.builder", "SUPPORTED_TYPES": "models.convert", "arch_of": "models.convert",
          "as_granite_config": "models.convert",
          "trainer_config": "models.convert", "PRESETS": "models.presets", "resolve_preset": "models.presets"}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
