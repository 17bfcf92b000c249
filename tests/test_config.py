"""Config loading: recipes, overrides, unknown keys and wrong types, and the CLI's exit code 2."""

import os
import subprocess
import sys

import pytest

from trainer.config import Config, load_config
from trainer.configlib import ConfigError, iter_fields

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
    (["--model.preset", "7b"], None),
])
def test_bad_overrides_name_the_key(argv, key):
    with pytest.raises(ConfigError) as e:
        cfg = load_config(None, argv)
        from trainer.build import build_arch
        try:
            build_arch(cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from err
    assert (key or "model.preset") in str(e.value)


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


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_cli_bad_key_one_line_exit_2():
    r = _cli("train", "configs/tiny.yaml", "--optim.lrr", "0.1",
             "--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml")
    assert r.returncode == 2
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "optim.lrr" in lines[0], r.stderr


def test_cli_bad_value_exit_2_before_launch():
    r = _cli("train", "configs/tiny.yaml", "--data.curriculum", "128:2M,256:1M,512:inf",
             "--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml")
    assert r.returncode == 2 and "data.curriculum" in r.stderr and "Traceback" not in r.stderr


def test_cli_missing_dataset_exit_2():
    r = _cli("train", "configs/tiny.yaml", "--data.source", "/no/such/data.jsonl")
    assert r.returncode == 2 and "data.source" in r.stderr


def test_cli_help_lists_every_option():
    r = _cli("train", "--help")
    assert r.returncode == 0
    for key, *_ in iter_fields(Config):
        assert f"--{key}" in r.stdout


def test_readme_config_reference_is_current():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    from config_reference import table

    assert table() in open(os.path.join(ROOT, "README.md")).read(), \
        "README config reference is stale: run python scripts/config_reference.py --write"
