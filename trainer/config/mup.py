"""``mup.*``: muP on/off, the base width and the muP constants (the math: ``trainer/mup/``)."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.base import ConfigError, doc

MUP_CLASSES = ("embedding", "readout", "vector", "hidden", "router")


@dataclass
class MupConfig:
    """``mup.*``: muP on/off, the base width the lrs were tuned at, and the muP constants.

        >>> cfg = MupConfig(enabled=True, base_width=256)
        >>> mup_multipliers(resolve_preset("125m"), cfg)["logits_scaling"]
        3.0
    """

    enabled: bool = doc("use muP init, multipliers and per-group lr scaling", False)
    base_width: int = doc("width at which learning rates were tuned (width_mult = d_model / base_width)", 128)
    base_std: float = doc("init std of embeddings and untied readout (every width) and of hidden matrices "
                          "with fan_in = base_width (others: base_std * sqrt(base_width / fan_in))", 0.02)
    embedding_multiplier: float = doc("alpha_emb: constant multiplier on the embedding output", 1.0)
    attn_alpha: float = doc("alpha_attn: attention scores scaled by alpha_attn / head_dim "
                            "(8 equals 1/sqrt(head_dim) at head_dim 64)", 8.0)
    output_alpha: float = doc("alpha_out: logits multiplied by alpha_out / width_mult", 1.0)
    residual_multiplier: float = doc("constant multiplier on each block's residual branch", 1.0)
    readout_zero_init: bool = doc("zero-init an untied readout (TP V; ignored when tied). Off by default: in "
                                  "the BENCHMARKS.md sweep it cost 0.1-0.2 nats with AdamW", False)
    query_zero_init: bool = doc("zero-init the query projections (params named by mup.query_names)", True)
    depth_scaled_init: bool = doc("divide the init std of each block's output projections by "
                                  "sqrt(2 * n_layers) (GPT-2 style)", False)
    independent_wd: bool = doc("weight decay independent of the muP lr scaling: a group's weight_decay is "
                               "divided by its lr multiplier so lr * wd matches the base width", False)
    query_names: list[str] = doc("override table: module names (last component) of the query projections",
                                 default_factory=lambda: ["q_proj"])
    output_proj_names: list[str] = doc("override table: module names (last component) of the block output "
                                       "projections; empty = found structurally", default_factory=list)
    class_overrides: dict[str, str] = doc("override table: parameter name -> muP class "
                                          "(embedding, readout, vector, hidden)", default_factory=dict)

    def validate(self) -> None:
        if self.base_width < 1:
            raise ConfigError(f"mup.base_width must be >= 1, got {self.base_width}")
        for key in ("base_std", "embedding_multiplier", "attn_alpha", "output_alpha", "residual_multiplier"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"mup.{key} must be > 0, got {getattr(self, key)}")
        for name, cls in self.class_overrides.items():
            if cls not in MUP_CLASSES:
                raise ConfigError(f"mup.class_overrides['{name}'] must be one of {', '.join(MUP_CLASSES)}, "
                                  f"got {cls!r}")
