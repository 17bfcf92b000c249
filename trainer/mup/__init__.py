"""muP: the parametrization (``parametrization.py``). Its settings are ``trainer.config.mup.MupConfig``;
the coordinate check and the LR-transfer sweep that test it live in ``trainer/studies/``."""

from trainer.mup.parametrization import (
    apply_mup_init,
    block_output_projections,
    classify_params,
    hidden_init_std,
    lr_multiplier,
    mup_multipliers,
    weight_decay_multiplier,
    width_mult,
)

__all__ = ["apply_mup_init", "block_output_projections", "classify_params", "hidden_init_std", "lr_multiplier",
           "mup_multipliers", "weight_decay_multiplier", "width_mult"]
