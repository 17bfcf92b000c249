"""Config loading: recipes, overrides, unknown keys and wrong types, and the CLI's exit code 2."""

import os
import sys

import pytest

from trainer.cli import dispatch
from trainer.config import Config, load_config
from trainer.config.base import ConfigError, iter_fields, load_yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ["tiny", "125m", "350m", "1b"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load(name):
    cfg = load_config(os.path.join(ROOT, "configs", f"{name}.yaml"))
    assert cfg.model.preset == name


def test_overrides_apply_with_types():
    cfg = load_config(os.path.join(ROOT, "configs/tiny.yaml"),
                      ["--optim.lr", "0.05", "--train.steps=7", "--optim.adamw_betas", "[0.8, 0.9]",
                       "--checkpoint.resume", "null"])
    assert cfg.optim.lr == 0.05 and cfg.train.steps == 7
    assert cfg.optim.adamw_betas == [0.8, 0.9] and cfg.checkpoint.resume is None


def test_int_widens_to_float_but_not_bool():
    assert load_config(None, ["--optim.lr", "1"]).optim.lr == 1.0
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["--train.steps", "true"])


@pytest.mark.parametrize("argv, key", [
    (["--optim.lrr", "0.1"], "optim.lrr"),
    (["--nosuch.key", "1"], "nosuch.key"),
    (["--train.steps", "abc"], "train.steps"),
    (["--optim.name", "sgd"], "optim.name"),
])
def test_bad_overrides_name_the_key(argv, key):
    """(An unknown model.preset is found by the preflight, after loading: tests/test_preflight.py.)"""
    with pytest.raises(ConfigError, match=key):
        load_config(None, argv)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: 0.1\n  momentun: 0.9\n")
    with pytest.raises(ConfigError, match="optim.momentun"):
        load_config(str(path))


def test_tokens_on_cli_replace_recipe_steps():
    cfg = load_config(os.path.join(ROOT, "configs/tiny.yaml"), ["--train.tokens", "1M"])
    assert cfg.train.tokens == "1M" and cfg.train.steps is None


def test_every_field_is_documented():
    for key, _, _, help_text in iter_fields(Config):
        assert help_text, f"{key} has no help"


def _cli(argv, capsys):
    """``scaleout ...`` in this process: (exit code, stdout, stderr lines)."""
    try:
        rc = dispatch.main(argv)
    except SystemExit as e:  # argparse's own exits go through OneLineParser.error
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, [line for line in out.err.splitlines() if line.strip()]


def test_cli_bad_key_one_line_exit_2_before_launch(capsys, no_launch, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, _, err = _cli(["train", "configs/tiny.yaml", "--optim.lrr", "0.1", "--accelerate-config",
                       "accelerate_configs/cpu_2proc_zero2.yaml"], capsys)
    assert rc == 2 and len(err) == 1 and "optim.lrr" in err[0], err
    assert not no_launch


def test_cli_bad_value_one_line_exit_2_before_launch(capsys, no_launch, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, _, err = _cli(["train", "configs/tiny.yaml", "--data.curriculum", "128:2M,256:1M,512:inf",
                       "--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml"], capsys)
    assert rc == 2 and len(err) == 1 and "data.curriculum" in err[0], err
    assert not no_launch


def test_cli_missing_dataset_exit_2(capsys, no_launch, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, _, err = _cli(["train", "configs/tiny.yaml", "--data.source", "/no/such/data.jsonl"], capsys)
    assert rc == 2 and len(err) == 1 and "data.source" in err[0], err
    assert not no_launch


def test_cli_help_lists_every_option(capsys):
    rc, out, _ = _cli(["train", "--help"], capsys)
    assert rc == 0
    for key, *_ in iter_fields(Config):
        assert f"--{key}" in out


def test_readme_config_reference_is_current():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from config_reference import table

    assert table() in open(os.path.join(ROOT, "README.md")).read(), \
        "README config reference is stale: run python scripts/config_reference.py --write"


def test_duplicate_yaml_key_is_refused_naming_key_and_line(tmp_path):
    """Issue 17: PyYAML keeps the last of two equal keys, so a second ``train:`` would silently replace
    the first; the loader refuses it. A ``<<: *anchor`` merge may still be overridden key by key."""
    path = tmp_path / "dup.yaml"
    path.write_text("train:\n  steps: 5\noptim:\n  lr: 0.02\n  lr: 0.03\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' at line 5 \(first at line 4\)"):
        load_config(str(path))
    with pytest.raises(ConfigError, match="--optim.adamw_betas: duplicate key 'a'"):
        load_config(None, ["--optim.adamw_betas", "{a: 1, a: 2}"])
    merged = load_yaml("a: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\n", "--x")
    assert merged == {"a": {"x": 1, "y": 2}, "c": {"x": 3, "y": 2}}


def test_empty_recipe_is_refused(tmp_path):
    """Issue 17: an empty recipe (or one of only comments) would run the built-in defaults unsaid."""
    for text in ("", "# just a comment\n\n"):
        path = tmp_path / "empty.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=f"recipe '{path}' is empty"):
            load_config(str(path))
