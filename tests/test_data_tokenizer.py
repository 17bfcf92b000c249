"""Tokenizers: the cached BPE (deterministic, race-safe), bytes, and a local saved tokenizer."""

import json
import multiprocessing as mp
import os

import datasets  # noqa: F401  (imported before forking, so the workers inherit it)
import pytest
from tokenizers import Tokenizer

from trainer.config.base import ConfigError
from trainer.config.data import DataConfig
from trainer.data.tokenizer import build_tokenizer, cached_bpe


@pytest.fixture()
def text_corpus(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    for i in range(4):
        (d / f"f{i}.txt").write_text("".join(f"def function_{j}(x):\n    return x * {j} + {i}\n\n" for j in range(200)))
    return d


def _build(args):
    src, cache = args
    return cached_bpe(DataConfig(source=src, vocab_size=400, val_every=0), cache).to_str()


def test_bpe_cache_raced_by_two_processes_gives_both_the_same_tokenizer(text_corpus, tmp_path):
    """Two processes miss the cache at once: each gets the same tokenizer, and the cache ends with one
    entry and no temporary folder (the loser's rename fails and it removes its own). The listing of
    the cache while the other still writes is not compared: that was this test's flake."""
    cache = str(tmp_path / "cache")
    with mp.get_context("fork").Pool(2) as pool:
        serialized = pool.map(_build, [(str(text_corpus), cache)] * 2)
    assert os.listdir(cache) == [e for e in os.listdir(cache) if not e.startswith(".tmp-")]
    assert len(os.listdir(cache)) == 1
    cached = Tokenizer.from_file(os.path.join(cache, os.listdir(cache)[0], "tokenizer.json"))
    assert serialized[0] == serialized[1] == cached.to_str()
    cfg = DataConfig(source=str(text_corpus), vocab_size=400, val_every=0)
    tok = build_tokenizer(cfg, cache_dir=cache)
    assert len(tok) == 400 and tok.eos_token == "<|endoftext|>" and tok.pad_token_id is not None
    ids = tok("def function_7(x):")["input_ids"]
    assert len(ids) < 10 and tok.decode(ids) == "def function_7(x):"


def test_saved_tokenizer_loads_as_local_path(text_corpus, tmp_path):
    cfg = DataConfig(source=str(text_corpus), vocab_size=400, val_every=0)
    tok = build_tokenizer(cfg, cache_dir=str(tmp_path / "cache"))
    tok.save_pretrained(tmp_path / "saved")
    again = build_tokenizer(DataConfig(tokenizer=str(tmp_path / "saved")))
    assert again("return x")["input_ids"] == tok("return x")["input_ids"]
    assert again.eos_token_id == tok.eos_token_id
    from_json = build_tokenizer(DataConfig(tokenizer=str(tmp_path / "saved" / "tokenizer.json")))
    assert from_json.eos_token_id == tok.eos_token_id


def test_bytes_tokenizer_round_trips():
    tok = build_tokenizer(DataConfig(tokenizer="bytes"))
    assert len(tok) == 258 and tok.eos_token_id == 256
    text = "héllo\n\tworld ✓"
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode()) and tok.decode(ids) == text


def test_local_tokenizer_without_eos_is_an_error(tmp_path):
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(tmp_path / "t.json"))
    with pytest.raises(ConfigError, match="data.tokenizer"):
        build_tokenizer(DataConfig(tokenizer=str(tmp_path / "t.json")))


def test_bad_config_values():
    with pytest.raises(ConfigError, match="data.curriculum"):
        DataConfig(curriculum="256:1M").validate()
    with pytest.raises(ConfigError, match="data.text_unit"):
        DataConfig(text_unit="word").validate()
    assert json.loads(json.dumps(DataConfig().__dict__))["source"] == "stdlib"
