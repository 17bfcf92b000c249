"""A resumed run trains on what it trained on (issue 17): the tokenizer, the architecture and the config
a run started with are pinned in its run directory (trainer/state/pinned.py); a resume reads them from
there, refuses a pinned key given another value (trainer/config/resume.py), says when the data source
changed, and a pinned setting changes on purpose through a new run directory started from a checkpoint."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, RUN_ENV, assert_no_abort, rank_summaries

from trainer.config import load_config
from trainer.config.resume import RESUMABLE, is_resumable, pinned_conflicts
from trainer.data.tokenizer import build_tokenizer
from trainer.state import pinned

TINY = os.path.join(ROOT, "configs", "tiny.yaml")


def write_corpus(folder, files: int = 4, docs: int = 40, offset: int = 0) -> str:
    """``files`` jsonl files of real Python source (stdlib modules), ``docs`` documents each."""
    from trainer.data.sources import stdlib_files

    os.makedirs(folder, exist_ok=True)
    modules = stdlib_files()[offset: offset + files * docs]
    for i in range(files):
        with open(os.path.join(folder, f"part{i}.jsonl"), "a") as f:
            for path in modules[i::files]:
                f.write(json.dumps({"text": open(path, encoding="utf-8", errors="replace").read()[:4000]}) + "\n")
    return str(folder)


# -- the table -------------------------------------------------------------------------------------


def test_pinned_keys_conflict_and_resumable_keys_do_not():
    old = load_config(TINY).to_dict()
    new = load_config(TINY, ["--data.vocab_size", "2048", "--model.d_model", "256", "--optim.lr", "0.01",
                             "--train.steps", "500", "--train.tokens_per_step", "16384",
                             "--log.trackers", "[]", "--ema.decay", "0.99"]).to_dict()
    assert pinned_conflicts(old, new) == [("model.d_model", None, 256), ("data.vocab_size", 4096, 2048),
                                          ("train.tokens_per_step", 4096, 16384)]
    assert pinned_conflicts(old, old) == []
    assert pinned_conflicts({"model": {"preset": "tiny"}}, new) == []  # keys an older version did not pin


def test_the_readme_table_covers_every_config_key_and_agrees_with_the_code():
    """README "What a resume may change": every config key is in one row; a row that says "refused"
    holds only keys the resume refuses, every other row only keys it lets change."""
    from trainer.config import Config
    from trainer.config.base import iter_fields

    readme = open(os.path.join(ROOT, "README.md")).read()
    section = readme.split("### What a resume may change", 1)[1].split("\n### ", 1)[0]
    rows = [(re.findall(r"`([a-z_.*]+)`", cells[0]), cells[1].strip())
            for line in section.splitlines() if line.startswith("| `")
            for cells in [line.strip("|").split("|", 1)]]
    assert len(rows) >= 20
    covered = set()
    for keys, text in rows:
        for key in keys:
            prefix = key[:-1] if key.endswith("*") else None
            names = [k for k, *_ in iter_fields(Config) if (k.startswith(prefix) if prefix else k == key)]
            assert names, f"README resume table: {key} is not a config key"
            refused = text.startswith("refused")
            for name in names:
                if not (prefix == "optim." and name in ("optim.name",)):  # the optim.* row says "every key but"
                    assert is_resumable(name) != refused, (name, text)
            covered.update(names)
    assert covered == {k for k, *_ in iter_fields(Config)}, {k for k, *_ in iter_fields(Config)} - covered
    for key in RESUMABLE:  # and the code lets nothing change that the table does not list
        assert any(key in keys or f"{key}*" in keys for keys, _ in rows), key


# -- the pin, in one process --------------------------------------------------------------------------


def test_a_run_that_died_before_its_first_checkpoint_resumes_with_its_pinned_tokenizer_and_architecture(tmp_path):
    from trainer.run.build import build_pinned

    corpus = write_corpus(tmp_path / "data", files=2, docs=20)
    base = ["--data.source", corpus, "--train.out_dir", str(tmp_path / "run")]
    tok, arch, _, write = build_pinned(load_config(TINY, [*base, "--data.vocab_size", "600"]), [], None, rank=0)
    write()  # what pin_run does on rank 0 before the first step
    assert os.path.isfile(tmp_path / "run" / "pinned" / "tokenizer" / "tokenizer.json")
    # It dies before step 1; the next invocation's settings disagree (preflight would refuse them; the
    # worker does not even read them).
    other = load_config(TINY, [*base, "--data.vocab_size", "300", "--model.d_model", "256"])
    tok2, arch2, _, nothing = build_pinned(other, [], None, rank=0)
    assert nothing is None
    text = open(os.path.join(corpus, "part0.jsonl")).read()[:3000]
    assert tok2(text)["input_ids"] == tok(text)["input_ids"] and len(tok2) == len(tok) > 300
    assert (arch2.vocab_size, arch2.hidden_size) == (arch.vocab_size, arch.hidden_size) == (640, 128)
    # checkpoint.resume null starts over: built from the settings and pinned anew
    over = load_config(TINY, [*base, "--data.vocab_size", "300", "--checkpoint.resume", "null"])
    fresh, _, _, write = build_pinned(over, [], None, rank=0)
    write()
    assert len(fresh) <= 300 and pinned.read_pin(str(tmp_path / "run"), []).config["data"]["vocab_size"] == 300


def test_init_from_a_checkpoint_starts_from_its_master_weights(tmp_path):
    """The documented way to change a pinned setting: a new run directory from the checkpoint."""
    from trainer.run.build import build_run
    from trainer.run.loop import train
    from trainer.state.reader import read_named_tensors

    corpus = write_corpus(tmp_path / "data", files=2, docs=20)
    common = ["--data.source", corpus, "--data.tokenizer", "bytes", "--data.curriculum", "64:inf",
              "--train.eval_every", "0", "--train.eval_batches", "1", "--dist.deepspeed_config", "null",
              "--log.trackers", "[]", "--log.progress", "false", "--data.partitions", "2", "--model.n_layers", "2"]
    first = train(load_config(TINY, [*common, "--train.steps", "2", "--train.tokens_per_step", "512",
                                     "--train.out_dir", str(tmp_path / "a")]))
    assert first["exit_code"] == 0
    ckpt = str(tmp_path / "a" / "checkpoints" / "step_000002")
    cfg = load_config(TINY, [*common, "--train.steps", "1", "--train.tokens_per_step", "1024",  # pinned in a
                             "--init.from", ckpt, "--train.out_dir", str(tmp_path / "b")])
    run = build_run(cfg)
    master = read_named_tensors(ckpt)
    model = run.accelerator.unwrap_model(run.model)
    assert len(master) == len(dict(model.named_parameters()))
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), master[name]), name
    assert run.tokenizer.get_vocab() == pinned.read_pin(None, [ckpt]).tokenizer().get_vocab()
    run.accelerator.end_training()


# -- 2 processes: stop, grow the source, resume; refused changes; the documented way ----------------------

ACCEL = ["--accelerate-config", "accelerate_configs/cpu_2proc_zero2.yaml"]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "trainer.cli", "train", "configs/tiny.yaml", *args]


def with_value(args: list[str], key: str, value: str) -> list[str]:
    """``args`` with ``key``'s value replaced, or the pair added."""
    if key not in args:
        return [*args, key, value]
    out = list(args)
    out[out.index(key) + 1] = value
    return out


@pytest.mark.slow
def test_resume_after_the_source_grew_keeps_the_pinned_tokenizer_and_refuses_pinned_changes(tmp_path):
    corpus = write_corpus(tmp_path / "data")
    out = str(tmp_path / "run")
    args = ["--data.source", corpus, "--data.partitions", "4", "--data.vocab_size", "1024", "--train.steps", "12",
            "--checkpoint.every", "3", "--train.tokens_per_step", "1024", "--data.curriculum", "64:inf",
            "--train.eval_every", "0", "--train.eval_batches", "1", "--log.trackers", "[]", "--log.progress", "false",
            "--model.n_layers", "2", "--train.warmup_steps", "1", "--train.out_dir", out, *ACCEL]
    env = dict(RUN_ENV, SCALEOUT_CACHE=str(tmp_path / "cache"))
    first = subprocess.run(cli(*args, "--train.stop_at_step", "6"), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-4000:]
    started = open(os.path.join(out, "pinned", "tokenizer", "tokenizer.json")).read()
    step6 = os.path.join(out, "checkpoints", "step_000006")
    assert open(os.path.join(step6, "tokenizer", "tokenizer.json")).read() == started
    first_losses = [h["loss"] for h in rank_summaries(out)[0]["history"]]

    write_corpus(tmp_path / "data", offset=400)  # documents appended to every file of the source
    sample = open(os.path.join(corpus, "part1.jsonl")).read()[-5000:]  # text of an appended document
    old_ids = pinned.read_pin(None, [step6]).tokenizer()(sample)["input_ids"]
    cfg = load_config(TINY, args[: args.index("--accelerate-config")])
    rederived = build_tokenizer(cfg.data, cache_dir=str(tmp_path / "cache2"))
    assert rederived(sample)["input_ids"] != old_ids  # what the resume must NOT train with

    for key, value in (("--data.vocab_size", "2048"), ("--model.d_model", "128")):
        bad = subprocess.run(cli(*with_value(args, key, value)), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=120)
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith(f"scaleout train: error: {key[2:]}: the run in '{out}' is pinned to"), bad.stderr
        assert not os.path.exists(os.path.join(out, "checkpoints", "step_000009"))

    resumed = subprocess.run(cli(*args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert_no_abort(resumed.stdout + resumed.stderr)
    notes = [ln for ln in resumed.stderr.splitlines() if "changed since the run was pinned" in ln]
    assert len(notes) == 1 and "4 file(s)" in notes[0], resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    final = os.path.join(out, "checkpoints", "step_000012")
    for folder in (os.path.join(out, "pinned"), final):
        assert open(os.path.join(folder, "tokenizer", "tokenizer.json")).read() == started
        assert pinned.read_pin(None, [final]).tokenizer()(sample)["input_ids"] == old_ids
    assert json.load(open(os.path.join(final, "meta.json")))["config"]["data"]["vocab_size"] == 1024

    # The documented way to change a pinned setting: a new run directory started from the checkpoint.
    new_out = str(tmp_path / "bigger_batch")
    moved = with_value(with_value(with_value(args, "--train.out_dir", new_out), "--train.tokens_per_step", "2048"),
                       "--train.steps", "2")
    again = subprocess.run(cli(*moved, "--init.from", final), cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-4000:]
    start_loss = rank_summaries(new_out)[0]["history"][0]["loss"]
    assert start_loss < first_losses[0] - 0.5, (start_loss, first_losses)  # it starts from step 12's weights
    assert open(os.path.join(new_out, "pinned", "tokenizer", "tokenizer.json")).read() == started


def test_grad_accum_and_prefetch_may_change_on_resume_the_batches_and_losses_stay(tmp_path):
    """README's rows for train.grad_accum (the same global batch in more micro-batches) and
    data.prefetch (speed only)."""
    from trainer.run.loop import train

    corpus = write_corpus(tmp_path / "data", files=2, docs=20)
    common = ["--data.source", corpus, "--data.tokenizer", "bytes", "--data.curriculum", "64:inf",
              "--train.tokens_per_step", "1024", "--train.steps", "4", "--train.eval_every", "0",
              "--train.eval_batches", "1", "--dist.deepspeed_config", "null", "--log.trackers", "[]",
              "--log.progress", "false", "--data.partitions", "2", "--model.n_layers", "2",
              "--data.prefetch", "false"]

    def history(out):
        return json.load(open(os.path.join(out, "ranks", "rank0.json")))["history"]

    assert train(load_config(TINY, [*common, "--train.out_dir", str(tmp_path / "a")]))["exit_code"] == 0
    split = str(tmp_path / "b")
    assert train(load_config(TINY, [*common, "--train.out_dir", split, "--train.stop_at_step", "2"]))["exit_code"] == 0
    changed = with_value(with_value(common, "--data.prefetch", "true"), "--train.grad_accum", "2")
    assert train(load_config(TINY, [*changed, "--train.out_dir", split]))["exit_code"] == 0
    whole, resumed = history(tmp_path / "a"), history(split)
    assert [h["step"] for h in resumed] == [3, 4] and [h["micro_batch_size"] for h in resumed] == [8, 8]
    assert [h["batch_sha"] for h in resumed] == [h["batch_sha"] for h in whole[2:]]
    for ours, theirs in zip(resumed, whole[2:]):
        assert abs(ours["loss"] - theirs["loss"]) < 1e-5, (ours["loss"], theirs["loss"])


@pytest.mark.slow
def test_a_zero2_checkpoint_resumes_without_deepspeed_on_the_same_trajectory(tmp_path):
    """README's row for dist.deepspeed_config: checkpoints are layout-free (lone processes, each with its
    own process group: the ZeRO-2 run is DeepSpeed's, the resumed one plain PyTorch)."""
    corpus = write_corpus(tmp_path / "data", files=2, docs=20)
    common = ["--data.source", corpus, "--data.tokenizer", "bytes", "--data.curriculum", "64:inf",
              "--train.tokens_per_step", "1024", "--train.steps", "4", "--train.eval_every", "0",
              "--train.eval_batches", "1", "--log.trackers", "[]", "--log.progress", "false",
              "--data.partitions", "2", "--model.n_layers", "2", "--checkpoint.every", "2"]

    def run(*extra):
        r = subprocess.run(cli(*common, *extra), cwd=ROOT, env=RUN_ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        return r.stdout + r.stderr

    whole, split = str(tmp_path / "whole"), str(tmp_path / "split")
    run("--train.out_dir", whole)
    run("--train.out_dir", split, "--train.stop_at_step", "2")
    assert "resumed from" in run("--train.out_dir", split, "--dist.deepspeed_config", "null")
    ref, resumed = rank_summaries(whole, 1)[0]["history"], rank_summaries(split, 1)[0]["history"]
    assert [h["step"] for h in resumed] == [3, 4]
    assert [h["batch_sha"] for h in resumed] == [h["batch_sha"] for h in ref[2:]]
    for ours, theirs in zip(resumed, ref[2:]):
        assert abs(ours["loss"] - theirs["loss"]) < 1e-5, (ours["loss"], theirs["loss"])
