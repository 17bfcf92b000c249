"""Issue 10: ``init.from`` continues from a transformers model (our export, a stock Llama folder, a Hub id
from the local cache) with the same logits at step 0, and trains.

Runs are single-process and in-process (``trainer.run.loop.train``), without DeepSpeed, on a tiny model
and a small local corpus; the bad inputs are rows of tests/test_preflight.py.
"""

import glob
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from trainer.cli.preflight import preflight
from trainer.config import load_config
from trainer.config.base import ConfigError
from trainer.data.tokenizer import bytes_tokenizer
from trainer.hf.init_from import read_init
from trainer.run.build import build_run
from trainer.run.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.yaml")
# Half the recipe's muP base width (128): the export carries real muP multipliers (logits_scaling 0.5).
TRAINS_BY = 0.1  # nats of validation loss a continued run must gain over its starting model
SMALL = ["--model.d_model", "64", "--model.n_layers", "2", "--model.d_ff", "128"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Real text: this repository's trainer sources, one document per file."""
    d = tmp_path_factory.mktemp("corpus")
    for path in sorted(glob.glob(os.path.join(ROOT, "trainer", "**", "*.py"), recursive=True)):
        if os.path.getsize(path):
            shutil.copy(path, d / os.path.relpath(path, ROOT).replace(os.sep, "_"))
    return str(d)


def config(corpus, out_dir, *extra):
    return load_config(TINY, ["--data.source", corpus, "--data.tokenizer", "bytes", "--data.curriculum", "64:inf",
                              "--train.tokens_per_step", "512", "--train.eval_every", "0", "--train.eval_batches", "1",
                              "--train.warmup_steps", "0", "--train.schedule", "constant", "--checkpoint.every", "0",
                              "--dist.deepspeed_config", "null", "--log.trackers", "[]", "--log.progress", "false",
                              "--data.prefetch", "false", "--data.val_every", "3",  # ~1/3 of ~30 files held out
                              "--data.partitions", "4",  # the 64 default would leave partitions without files
                              "--train.out_dir", str(out_dir), *extra])


def losses(out_dir):
    with open(os.path.join(out_dir, "ranks", "rank0.json")) as f:
        return [h["loss"] for h in json.load(f)["history"]]


@pytest.fixture(scope="module")
def export(corpus, tmp_path_factory):
    """The end-of-run export of a tiny muP run (the recipe's muP at width 64, EMA weights exported)."""
    out = tmp_path_factory.mktemp("first")
    result = train(config(corpus, out, "--train.steps", "2", *SMALL))
    assert result["exit_code"] == 0
    return result["export_dir"]


@torch.no_grad()
def val_loss(model, batches) -> float:
    """The mean loss of ``model`` on the run's validation batches, computed here (not by the trainer)."""
    model.eval()
    return sum(model(**b).loss.item() for b in batches) / len(batches)


@torch.no_grad()
def max_logit_diff(trainer_model, reference, vocab) -> float:
    x = torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(0))
    trainer_model.eval()
    reference.eval()
    return (trainer_model(input_ids=x).logits - reference(input_ids=x).logits).abs().max().item()


def test_continue_from_export(export, corpus, tmp_path):
    cfg = config(corpus, tmp_path, "--init.from", export, "--train.steps", "5", *SMALL)  # model.*: agrees
    preflight(cfg, 1)
    run = build_run(cfg)
    reference = AutoModelForCausalLM.from_pretrained(export, dtype=torch.float32)
    model = run.accelerator.unwrap_model(run.model)
    assert model.config.logits_scaling == reference.config.logits_scaling == 0.5  # its muP multipliers kept
    assert max_logit_diff(model, reference, len(run.tokenizer)) <= 1e-6
    assert model.config.vocab_size == reference.config.vocab_size == 384  # padded by the first run, kept
    before = val_loss(reference, run.val_batches)
    run.accelerator.end_training()

    result = train(cfg)
    assert result["exit_code"] == 0 and result["step"] == 5 and len(losses(tmp_path)) == 5
    # it trains: validation loss below the starting model's on the same batches by a clear margin
    assert result["val/loss"] < before - TRAINS_BY, (before, result["val/loss"])
    again = AutoModelForCausalLM.from_pretrained(result["export_dir"])
    assert again.config.model_type == "granite"


def test_init_from_is_the_config_key(tmp_path):
    """``init.from`` (a Python keyword) round-trips through --print-config's YAML."""
    import yaml

    cfg = load_config(TINY, ["--init.from", "runs/x/export"])
    assert cfg.init.from_ == "runs/x/export" and cfg.to_dict()["init"] == {"from": "runs/x/export"}
    (tmp_path / "dump.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(str(tmp_path / "dump.yaml")).init.from_ == "runs/x/export"


def save_llama(folder, vocab, seed=0):
    """A stock Llama folder: LlamaForCausalLM.save_pretrained + the project's bytes tokenizer."""
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default",
                                                                                        "rope_theta": 5e5})
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    bytes_tokenizer().save_pretrained(folder)
    return str(folder)


def test_continue_from_llama_folder(corpus, tmp_path):
    tok = bytes_tokenizer()
    folder = save_llama(tmp_path / "llama", vocab=len(tok))  # 258: not padded, kept as is
    val = tmp_path / "val.jsonl"  # and validation on a separate source (data.val_source)
    val.write_text("".join(json.dumps({"text": f"validation document {i} " * 20}) + "\n" for i in range(8)))
    cfg = config(corpus, tmp_path / "run", "--init.from", folder, "--train.steps", "4", "--mup.enabled", "false",
                 "--data.val_source", str(val))
    preflight(cfg, 1)
    run = build_run(cfg)
    model = run.accelerator.unwrap_model(run.model)
    assert model.config.model_type == "granite" and model.config.vocab_size == 258
    reference = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32)
    assert max_logit_diff(model, reference, 258) <= 1e-6
    before = val_loss(reference, run.val_batches)
    run.accelerator.end_training()

    result = train(cfg)
    assert result["exit_code"] == 0 and len(losses(tmp_path / "run")) == 4
    assert result["val/loss"] < before - TRAINS_BY, (before, result["val/loss"])
    exported = AutoModelForCausalLM.from_pretrained(result["export_dir"])
    assert exported.config.model_type == "granite" and exported.config.vocab_size == 258


def test_mup_checks_against_llama_multipliers(corpus, tmp_path):
    """muP applies to a Llama only at base width = its width with 1/sqrt(head_dim) attention (alpha 4 at
    head_dim 16); otherwise one line naming the mup.* keys and the matching values."""
    folder = save_llama(tmp_path / "llama", vocab=258)
    ok = config(corpus, tmp_path, "--init.from", folder, "--mup.base_width", "64", "--mup.attn_alpha", "4")
    assert read_init(ok).config.attention_multiplier == 0.25
    with pytest.raises(ConfigError) as e:
        read_init(config(corpus, tmp_path, "--init.from", folder))  # the recipe: base 128, attn_alpha 8
    assert "mup.base_width 64 would match" in str(e.value) and "mup.attn_alpha 4 would match" in str(e.value)
    assert "\n" not in str(e.value)


def test_hub_id_from_local_cache(corpus, tmp_path, monkeypatch):
    """A Hub id resolves through huggingface_hub's cache layout offline; a missing one is one line."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    save_llama(repo / "snapshots" / commit, vocab=258)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    init = read_init(config(corpus, tmp_path, "--init.from", "acme/tiny-llama", "--mup.enabled", "false"))
    assert init.path == str(repo / "snapshots" / commit) and init.model_type == "llama"
    assert len(init.tokenizer()) == 258
    with pytest.raises(ConfigError, match="init.from: 'acme/missing' is not a local folder") as e:
        read_init(config(corpus, tmp_path, "--init.from", "acme/missing"))
    assert "\n" not in str(e.value)
