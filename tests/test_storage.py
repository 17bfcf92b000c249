"""Issue 17: storage faults are named in one line, and nothing half-written stays.

- a 2-process ZeRO-2 run whose disk fills up at a later checkpoint: a real small tmpfs as
  ``train.out_dir`` where this machine lets us mount one (root), else ENOSPC injected at the write
  (tests/workers/faults.py), so it never just skips; one line, exit 74, no ``.partial`` left, and
  the previous checkpoint resumes bit-exact (against conftest's uninterrupted ``zero2_reference``);
- preflight's checkpoint size estimate (against the real model) and its free-space refusal;
- a damaged cached tokenizer: one warning naming the file, trained again, and a run succeeds;
- a tracker that cannot write: one warning, and the run goes on.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import COMMON, HASHES, RUN_ENV, as_args, assert_no_abort  # tests/ is on sys.path

from trainer.config import load_config
from trainer.config.base import ConfigError
from trainer.state.size import check_checkpoint_space, checkpoint_bytes, param_counts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = os.path.join(ROOT, "tests", "workers", "sitecustomize")
# COMMON's checkpoints are ~25 MB (2 layers of fragments, data positions, tokenizer): with keep 2, steps 2
# and 4 fit in 64 MB, and step 6 (a third while the oldest still exists) does not.
TMPFS = "64M"


def _mount_tmpfs(where, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``where``; False when this machine does not allow it (not root,
    no CAP_SYS_ADMIN, no mount binary)."""
    if os.geteuid() != 0:
        return False
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    except OSError:
        return False
    return r.returncode == 0


def _train(out_dir, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", *as_args(COMMON),
           "--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml", "--train.out_dir", str(out_dir)]
    return subprocess.run(cmd, cwd=ROOT, env=dict(RUN_ENV, **env), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_disk_full_at_a_later_checkpoint_is_one_line_exit_74_and_resumes_bit_exact(tmp_path, zero2_reference):
    """COMMON's run (checkpoints every 2 steps, keep 2) on a disk that holds two checkpoints: steps 2
    and 4 are written, step 6 fails. One line names the file, "No space left on device", the space a
    checkpoint needs and what is free; exit 74; the partial directory is gone and steps 2 and 4 are
    intact. With room again, the same command resumes from step 4 and ends bit-for-bit where the
    uninterrupted run did."""
    want = zero2_reference.summaries()  # first: one multi-process run at a time
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = _mount_tmpfs(disk, TMPFS)
    fault = {} if mounted else {"FAULT_ENOSPC": "6", "PYTHONPATH": os.pathsep.join([SITE, ROOT])}
    out = disk / "run"
    try:
        t0 = time.monotonic()
        full = _train(out, fault)
        first_s = time.monotonic() - t0
        output = full.stdout + full.stderr
        assert full.returncode == 74, output[-6000:]
        lines = [line for line in output.splitlines() if "No space left on device" in line]
        assert len(lines) == 1, output[-6000:]
        line = lines[0]
        partial = str(out / "checkpoints" / "step_000006.partial")
        assert line.startswith(f"scaleout train: error: {partial}/"), line
        assert "(ENOSPC) while saving checkpoint step 6; a checkpoint needs ~" in line and " is free in " in line
        assert "step_000004 is the newest complete one" in line and "run the same command to resume" in line
        assert "Traceback" not in output and "inline_container" not in output
        assert_no_abort(output)
        assert sorted(os.listdir(out / "checkpoints")) == ["step_000002", "step_000004"]
        for step in ("step_000002", "step_000004"):
            assert (out / "checkpoints" / step / "COMPLETE").exists()
        if mounted:
            subprocess.run(["mount", "-o", "remount,size=512M", str(disk)], check=True)
        t0 = time.monotonic()
        again = _train(out, {})
        second_s = time.monotonic() - t0
        assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
        resumed = again.stdout.split("resumed from", 1)[1].splitlines()[0]
        assert "step_000004" in resumed, resumed
        got = [json.load(open(out / "ranks" / f"rank{r}.json")) for r in range(2)]
        for g, w in zip(got, want):
            assert {k: g[k] for k in HASHES} == {k: w[k] for k in HASHES}
        print(f"tmpfs {'mounted' if mounted else 'not allowed: ENOSPC injected'}; full run {first_s:.1f} s, "
              f"resumed run {second_s:.1f} s")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# ---- preflight: one checkpoint's size and the free space for checkpoint.keep + 1 of them


@pytest.mark.parametrize("overrides", [["--model.n_layers", "3"], ["--model.preset", "1b", "--model.n_layers", "1"],
                                       ["--model.preset", "125m", "--model.n_layers", "2", "--model.n_kv_heads", "4"]],
                         ids=["tiny", "1b-gqa-untied", "125m-gqa"])
def test_checkpoint_size_counts_the_real_models_parameters_and_optimizer_groups(overrides):
    """The arithmetic count equals the built model's (GQA, untied readout of 1b included), and the Muon
    share equals what ``build_param_groups`` gives Muon; the bytes are fp32 weights + moments + EMA."""
    import torch

    from models import build_model, count_params, granite_config
    from trainer.optim.groups import build_param_groups

    cfg = load_config("configs/tiny.yaml", overrides)
    arch = cfg.model.arch()
    with torch.device("meta"):
        model = build_model(granite_config(arch, 4096))
    matrices, rest = param_counts(arch, 4096)
    assert matrices + rest == count_params(model)
    groups = build_param_groups(model, cfg)  # configs/tiny.yaml: optim.name muon
    assert matrices == sum(p.numel() for g in groups if g["kind"] == "muon" for p in g["params"])
    n = matrices + rest
    assert checkpoint_bytes(arch, 4096, muon=True, ema=True) == 4 * (n + matrices + 2 * rest + n) + (2 << 20)
    assert checkpoint_bytes(arch, 4096, muon=False, ema=False, replicas=2) == 4 * 3 * n * 2 + (2 << 20)


def test_too_little_free_space_for_keep_plus_one_checkpoints_is_refused(tmp_path):
    cfg = load_config("configs/tiny.yaml", ["--train.out_dir", str(tmp_path / "new" / "run"), "--checkpoint.keep", "2"])
    arch = cfg.model.arch()
    each = checkpoint_bytes(arch, 4096, muon=True, ema=True)
    check_checkpoint_space(cfg, arch, 2, free=3 * each)  # exactly enough
    with pytest.raises(ConfigError) as e:
        check_checkpoint_space(cfg, arch, 2, free=3 * each - 1)
    line = str(e.value)
    assert line.startswith(f"train.out_dir: '{tmp_path / 'new' / 'run'}' has ") and "\n" not in line
    assert f"3 more checkpoints of ~{each / 1e6:.1f} MB" in line and f"need {3 * each / 1e6:.1f} MB" in line
    assert "lower checkpoint.keep" in line
    # two complete checkpoints already there: one more is written before the oldest goes
    for step in (2, 4):
        os.makedirs(tmp_path / "new" / "run" / "checkpoints" / f"step_{step:06d}")
        (tmp_path / "new" / "run" / "checkpoints" / f"step_{step:06d}" / "COMPLETE").write_text(f"{step}\n")
    check_checkpoint_space(cfg, arch, 2, free=each)
    with pytest.raises(ConfigError, match="1 more checkpoint of"):
        check_checkpoint_space(cfg, arch, 2, free=each - 1)
    check_checkpoint_space(cfg, arch, 2)  # this machine's real disk has room for a tiny model's


# ---- a damaged tokenizer cache


@pytest.fixture
def damaged_cache(tmp_path):
    """A BPE cache (``SCALEOUT_CACHE``) whose tokenizer.json for the run below is cut in half."""
    from trainer.data.tokenizer import cached_bpe

    cfg = load_config("configs/tiny.yaml", ["--data.vocab_size", "512"])
    cache = tmp_path / "cache"
    cached_bpe(cfg.data, str(cache / "tokenizers"))
    (entry,) = os.listdir(cache / "tokenizers")
    path = cache / "tokenizers" / entry / "tokenizer.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    return cache, str(path), text


def test_damaged_tokenizer_cache_is_named_rebuilt_and_the_run_succeeds(tmp_path, damaged_cache):
    """One warning line naming the file and the parser's message; the cache holds a good copy again
    (the same tokenizer); a single-process run with it ends 0."""
    cache, path, text = damaged_cache
    env = {k: v for k, v in RUN_ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
    cmd = [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", "--data.vocab_size", "512",
           "--train.steps", "2", "--train.out_dir", str(tmp_path / "run"), "--data.curriculum", "64:inf",
           "--train.tokens_per_step", "512", "--model.n_layers", "2", "--train.eval_every", "0",
           "--train.eval_batches", "1", "--log.trackers", "[]", "--log.progress", "false",
           "--dist.deepspeed_config", "null"]
    r = subprocess.run(cmd, cwd=ROOT, env=dict(env, SCALEOUT_CACHE=str(cache)), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    warned = [line for line in r.stderr.splitlines() if "damaged" in line]
    assert warned == [f"scaleout: warning: the cached tokenizer {path} is damaged "
                      f"({warned[0].split('damaged (', 1)[1].split(')', 1)[0]}); training it again"], r.stderr
    assert "EOF while parsing" in warned[0]
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(path).to_str() == Tokenizer.from_str(text).to_str()
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()


# ---- a tracker that cannot write


def test_tracker_that_cannot_write_warns_once_and_training_goes_on(tmp_path, capsys, monkeypatch):
    """A real accelerate tracker writing to /dev/full (every write: ENOSPC): ``Tracker.log`` says so
    once and returns; wandb whose directory cannot be made (a file is in the way): ``start`` says so
    once and the run goes on without trackers."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    from trainer.run import tracking

    monkeypatch.setenv("WANDB_MODE", "offline")

    class JsonLines(GeneralTracker):
        name, requires_logging_directory = "jsonlines", False

        def __init__(self, path):
            super().__init__()
            self.f = open(path, "w", buffering=1)

        @property
        def tracker(self):
            return self.f

        def store_init_configuration(self, values):
            pass

        def log(self, values, step=None, **kwargs):
            self.f.write(json.dumps({"step": step, **values}) + "\n")

    acc = Accelerator(cpu=True, log_with=[JsonLines("/dev/full")])
    acc.init_trackers("p")
    tracker = tracking.Tracker(acc)
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0}, step)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("warning: log.trackers: writing the metrics of step 1 failed"), out
    assert "No space left on device" in out[0] and "training goes on" in out[0]
    acc.trackers.clear()

    (tmp_path / "wandb").write_text("a file where wandb's directory goes")
    cfg = load_config("configs/tiny.yaml", ["--train.out_dir", str(tmp_path), "--log.trackers", "[wandb]"])
    state = {}
    opened = tracking.start(SimpleNamespace(cfg=cfg, accelerator=acc), state)
    opened.log({"train/loss": 1.0}, 1)
    opened.finish()
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if "warning" in line] == [
        f"warning: log.trackers: could not open wandb under {tmp_path} (FileExistsError: [Errno 17] File exists: "
        f"'{tmp_path / 'wandb'}'); training goes on without them"], out
    assert not acc.trackers
