"""The run config: every config dataclass and the pure parsers they need. Imports no torch.

    >>> from trainer.config import load_config
    >>> cfg = load_config("configs/tiny.yaml", ["--optim.lr", "0.02", "--train.steps", "50"])
    >>> cfg.optim.lr
    0.02

``base`` (the typed-dataclass machinery, ``ConfigError``), ``sections`` (model, init, train, dist,
checkpoint, export, log and the top-level ``Config``), one module for each larger section (``data``,
``optim``, ``mup``, ``ema``, ``hub``), ``curriculum`` (token counts, the curriculum string), ``load``
(recipe + overrides) and ``args`` (the one-line argparse parser every command uses).
"""

from trainer.config.base import ConfigError
from trainer.config.load import load_config, parse_overrides
from trainer.config.sections import Config

__all__ = ["Config", "ConfigError", "load_config", "parse_overrides"]
