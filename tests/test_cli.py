"""The command-line traps a new user fell into (issue 10), one test each: abbreviated flags in every
command and script, the muP tools overwriting the committed docs/ files by default, the README's
optimizer-benchmark command that needed `accelerate launch`, and pyproject's deprecated license table.
(Unknown commands, `--config FILE` and abbreviated `scaleout train` flags: tests/test_preflight.py.)"""

import os
import runpy
import subprocess
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", WANDB_MODE="offline")


def _run(args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args, wrong", [
    (["trainer/cli/__main__.py", "coord-check", "--width", "64"], "--width"),
    (["trainer/cli/__main__.py", "lr-sweep", "--step", "3"], "--step"),
    (["scripts/bench/optimizer.py", "--iter", "2"], "--iter"),
    (["scripts/bench/ema.py", "--repeat", "2"], "--repeat"),
    (["scripts/bench/data.py", "--step", "2"], "--step"),
    (["scripts/bench/convergence.py", "--quic"], "--quic"),
    (["scripts/bench/gpu.py", "--smok"], "--smok"),
    (["scripts/bench/straddlers.py", "--writ"], "--writ"),
])
def test_abbreviated_flags_are_errors(args, wrong, monkeypatch, capsys):
    """Run as `python SCRIPT ARGS` would (in this process: the imports are already here)."""
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(ROOT, args[0]), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert f"unrecognized arguments: {wrong}" in err, err


def test_every_script_refuses_abbreviated_flags():
    """Every argparse parser under scripts/ and trainer/ is built with allow_abbrev=False (the ones above
    are run; this finds a new script that forgot)."""
    import re

    missing = []
    for folder in ("scripts", "trainer"):
        for d, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    text = open(os.path.join(d, f)).read()
                    for m in re.finditer(r"(ArgumentParser|OneLineParser)\((?:[^()]|\([^()]*\))*\)", text):
                        if "allow_abbrev=False" not in m.group(0) and m.group(1) == "ArgumentParser":
                            missing.append(os.path.relpath(os.path.join(d, f), ROOT))
    assert not missing, f"argparse.ArgumentParser without allow_abbrev=False: {missing}"


def test_coord_check_writes_under_runs_by_default(tmp_path):
    r = _run(["-m", "trainer.cli", "coord-check", "--widths", "32,64", "--steps", "1", "--n-layers", "1",
              "--seq-len", "8", "--batch", "2"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    written = sorted(os.path.relpath(os.path.join(d, n), tmp_path) for d, _, ns in os.walk(tmp_path) for n in ns)
    assert written and all(w.startswith(os.path.join("runs", "coord_check") + os.sep) for w in written), written
    assert any(w.endswith(".csv") for w in written) and any(w.endswith(".png") for w in written), written


def test_lr_sweep_writes_under_runs_by_default():
    from trainer.studies.lr_sweep import parse_args

    out = parse_args([]).out
    assert out.startswith("runs/") and not out.startswith("docs/")
    assert parse_args(["--out", "docs/mup/lr_sweep"]).out == "docs/mup/lr_sweep"


@pytest.mark.slow  # the bench starts its own 2 ranks
def test_optimizer_bench_runs_with_plain_python():
    """The README command (`.venv/bin/python scripts/bench/optimizer.py`) starts its own 2 ranks and
    prints progress; one variant, one iteration of a 64-wide model keeps it short."""
    r = _run(["scripts/bench/optimizer.py", "--iters", "1", "--warmup", "0", "--variants", "ddp_replicated",
              "--d-model", "64"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1/1] ddp_replicated" in r.stdout, r.stdout  # "[run 1/1, 1/1] ddp_replicated: ..."
    assert "| ddp_replicated |" in r.stdout, r.stdout


def test_pyproject_license_is_an_spdx_string():
    """setuptools >= 77 warns on every install about a `license = {text = ...}` table."""
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        project = read_configuration(os.path.join(ROOT, "pyproject.toml"))["project"]
    assert project["license"] == "Apache-2.0"
