"""Load a run config: dataclass defaults < YAML recipe < ``--section.key value`` overrides.

    >>> cfg = load_config("configs/tiny.yaml", ["--optim.lr", "0.02", "--train.steps", "50"])
    >>> cfg.optim.lr
    0.02
"""

from __future__ import annotations

import difflib

from trainer.config.base import ConfigError, from_dict, iter_fields, load_yaml_file, parse_scalar, set_dotted
from trainer.config.sections import Config


def parse_overrides(argv: list[str]) -> dict:
    """``['--optim.lr', '0.02', '--train.steps=5']`` -> nested dict; each key must be a known field."""
    known = {key for key, *_ in iter_fields(Config)}
    tree: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument '{arg}'; overrides look like --section.key value")
        key, eq, value = arg[2:].partition("=")
        if key not in known:
            raise ConfigError(_unknown_key(key, known))
        if not eq:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise ConfigError(f"override '--{key}' needs a value, e.g. --{key} VALUE")
            value, i = argv[i + 1], i + 1
        if _has_dotted(tree, key):
            raise ConfigError(f"override '--{key}' is given twice; give it once")
        set_dotted(tree, key, parse_scalar(value, key))
        i += 1
    return tree


def _unknown_key(key: str, known: set[str]) -> str:
    if key in ("config", "recipe", "config-file", "config_file"):
        return f"unknown option '--{key}'; pass the recipe as the first argument: scaleout train configs/tiny.yaml"
    launcher = {"accelerate-config", "num-processes", "print-config"}  # scaleout train's own flags, for the hint
    near = difflib.get_close_matches(key, sorted(known | launcher), n=1)
    hint = f"did you mean --{near[0]}?" if near else "run 'scaleout train --help' for the list"
    return f"unknown config key '{key}'; {hint}"


def _has_dotted(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | None, overrides: list[str] | None = None) -> Config:
    """Recipe file (optional) + overrides -> validated ``Config``. Raises ``ConfigError``."""
    tree: dict = {}
    if path is not None:
        tree = load_yaml_file(path, "recipe", "pass a recipe such as configs/tiny.yaml")
        if not tree:  # empty, or only comments: running the built-in defaults would not be what was meant
            raise ConfigError(f"recipe '{path}' is empty (no settings); write its settings (start from "
                              "configs/tiny.yaml), or give no recipe to run the built-in defaults")
        tree = {k: {} if v is None else v for k, v in tree.items()}  # an empty section is no section
    over = parse_overrides(overrides or [])
    train = tree.get("train")
    if isinstance(train, dict) and {"steps", "tokens"} & set(over.get("train", {})):
        for key in ("steps", "tokens"):  # the CLI's run length replaces the recipe's
            train.pop(key, None)
    tree = _merge(tree, over)
    train = tree.get("train")
    if isinstance(train, dict) and "steps" not in train and "tokens" not in train:
        train["steps"] = 100
    return from_dict(Config, tree)
