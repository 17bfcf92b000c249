"""Typed config machinery: dataclasses from nested dicts, dotted overrides, CLI flags.

Every section is a plain dataclass whose fields carry ``metadata={"help": ...}``.
Unknown keys and wrong types raise ``ConfigError`` (a ``ValueError``) naming the
dotted key and the fix, at load time, before any worker starts.

    >>> cfg = load_config("configs/tiny.yaml", ["--optim.lr", "0.02"])
"""

from __future__ import annotations

import copy
import dataclasses
import keyword
import math
import os
import re
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A user mistake in a recipe or override; the message names the key and the fix."""


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names one key twice; ``load_yaml`` turns it into a ``ConfigError`` naming the file."""

    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.line, self.first_line = key, line, first_line


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``6e-3``, ``1e6``, ``-2e-5`` as floats, and
    refuses a key given twice in one mapping.

    YAML 1.1 (PyYAML) needs a dot and a signed exponent (``1.0e-3``); users write the short form
    everywhere, so recipes and ``--key value`` overrides both load through this loader. PyYAML keeps
    the last of two equal keys, so a second ``train:`` section would silently replace the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # ``<<: *base`` may be overridden key by key; complex keys are not ours
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise DuplicateKeyError(key, line, seen[key])
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


# Appended after PyYAML's own resolvers, so it only sees what the int and float rules left as strings.
Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                             re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"),
                             list("-+0123456789."))


def load_yaml(text_or_file, name: str) -> Any:
    """Parse YAML with ``Loader``; a syntax error or a duplicate key becomes one ``ConfigError`` naming
    ``name`` (and the line, for a file)."""
    try:
        return yaml.load(text_or_file, Loader=Loader)  # noqa: S506 -- Loader is a SafeLoader
    except DuplicateKeyError as e:
        where = "" if isinstance(text_or_file, str) else f" at line {e.line} (first at line {e.first_line})"
        raise ConfigError(f"{name}: duplicate key {e.key!r}{where}; give each key once "
                          "(merge the two into one)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None and not isinstance(text_or_file, str) else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{name}{where}: YAML syntax error ({problem}); fix the YAML there") from None


def load_yaml_file(path: str, what: str, hint: str) -> dict:
    """A YAML file that must hold a mapping; missing, a directory, bad syntax or not a mapping are
    ``ConfigError`` naming ``what`` (the flag or key) and ``hint`` (what to pass instead)."""
    if not os.path.exists(path):
        raise ConfigError(f"{what}: file '{path}' not found; {hint}")
    if not os.path.isfile(path):
        raise ConfigError(f"{what}: '{path}' is a directory, not a YAML file; {hint}")
    try:
        with open(path, encoding="utf-8") as f:
            tree = load_yaml(f, f"{what} '{path}'")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what}: cannot read '{path}' ({type(e).__name__}: {e}); {hint}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{what}: '{path}' must hold a YAML mapping (key: value lines), "
                          f"got a {type(tree).__name__}; {hint}")
    return tree


def doc(help: str, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with its one-line documentation (shown by ``--help``)."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def _strip_optional(tp) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (ints widen to floats); raise naming ``key``."""
    tp, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' may not be null; give a {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping of {tp.__name__} fields (key: value lines "
                              f"indented under '{key}:'), got {value!r}")
        return from_dict(tp, value, prefix=key)
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list such as [{value}], got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float:
        return _finite_float(value, key)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # ``tokens: 1000000``, ``preset: 125`` -- the field's own check reads it
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"config key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def _finite_float(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config key '{key}' must be a number (e.g. 0.02 or 1e-3), got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}; give e.g. 0.02 or 1e-3")
    return float(value)


def config_key(field_name: str) -> str:
    """The config key of a dataclass field: its name, less the trailing underscore of a name that
    would be a Python keyword (field ``from_`` is the key ``init.from``)."""
    bare = field_name[:-1] if field_name.endswith("_") else field_name
    return bare if keyword.iskeyword(bare) else field_name


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys are errors that list the valid ones."""
    hints = typing.get_type_hints(cls)
    names = {config_key(f.name): f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            valid = ", ".join(sorted(names))
            raise ConfigError(f"unknown config key '{dotted}'; valid keys here: {valid}")
        kwargs[names[key]] = coerce(value, hints[names[key]], dotted)
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def to_dict(obj) -> dict:
    """Nested dict keyed by config keys (what ``from_dict`` reads back)."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[config_key(f.name)] = to_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def iter_fields(cls, prefix: str = ""):
    """Yield (dotted key, annotation, default, help) for every leaf field of ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{config_key(f.name)}" if prefix else config_key(f.name)
        tp, _ = _strip_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            yield from iter_fields(tp, dotted)
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            yield dotted, hints[f.name], default, f.metadata.get("help", "")


def parse_scalar(text: str, key: str = "value") -> Any:
    """Parse a CLI override value the way a recipe would (``0.02``, ``1e-3``, ``true``, ``null``, ``[1,2]``)."""
    return load_yaml(text, f"--{key}")


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for p in parents:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{dotted}': '{p}' is a value, not a section")
        node = child
    node[leaf] = value
