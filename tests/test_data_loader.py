"""The loader in one process: exact token stream across a phase change, exact resume, validation, errors."""

import hashlib
import json
import os
import random

import numpy as np
import pytest
import torch

from trainer.config.base import ConfigError
from trainer.config.data import DataConfig
from trainer.data.loader import TrainLoader, build_val_batches
from trainer.data.packing import join_documents
from trainer.data.preflight import check_source
from trainer.data.sources import is_heldout, stdlib_files
from trainer.data.tokenizer import build_tokenizer


def write_corpus(root, n_files=6, docs_per_file=12, seed=0):
    """Small jsonl shards of ASCII documents of varied length (the bytes tokenizer maps them 1:1)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    docs = []
    for f in range(n_files):
        with open(root / f"shard{f:02d}.jsonl", "w") as fh:
            for i in range(docs_per_file):
                text = f"<{f}.{i}> " + " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
                docs.append(text)
                fh.write(json.dumps({"text": text, "id": f"{f}.{i}"}) + "\n")
    return docs


@pytest.fixture()
def corpus(tmp_path):
    return tmp_path, write_corpus(tmp_path)


def data_cfg(root, **kw):
    base = {"source": str(root), "tokenizer": "bytes", "curriculum": "16:512,32:inf", "val_every": 7,
            "shuffle_buffer": 0, "seed": 0, "partitions": 1}
    base.update(kw)
    return DataConfig(**base)


def step_hash(mbs):
    h = hashlib.sha256()
    for b in mbs:
        h.update(b["input_ids"].numpy().tobytes())
    return h.hexdigest()[:16]


def test_stream_is_exact_across_phase_change(corpus):
    root, docs = corpus
    cfg = data_cfg(root)
    tok = build_tokenizer(cfg)
    loader = TrainLoader(cfg, tok, tokens_per_step=128, grad_accum=2)
    got, shapes = [], []
    for _ in range(12):
        shapes.append((loader.phase, loader.seq_len, loader.micro_batch_size))
        mbs = loader.next_step()
        assert [tuple(b["input_ids"].shape) for b in mbs] == [(shapes[-1][2], shapes[-1][1])] * 2
        assert sum(b["input_ids"].numel() for b in mbs) == 128
        got += [b["input_ids"].reshape(-1) for b in mbs]
    assert shapes[0] == (0, 16, 4) and shapes[-1] == (1, 32, 2)
    assert loader.tokens_seen == 12 * 128
    train_docs = [d for d in docs if not is_heldout(d, 7)]
    want = join_documents([list(d.encode()) for d in train_docs], tok.eos_token_id)
    got = torch.cat(got).numpy()
    assert len(want) > len(got)
    assert np.array_equal(got, want[: len(got)])


def test_shuffled_epoch_covers_every_training_doc_once(corpus):
    root, docs = corpus
    cfg = data_cfg(root, shuffle_buffer=5, epochs=1)
    tok = build_tokenizer(cfg)
    loader = TrainLoader(cfg, tok, tokens_per_step=32, grad_accum=1)
    rows = []
    with pytest.raises(StopIteration):
        while True:
            rows += [b["input_ids"].reshape(-1) for b in loader.next_step()]
    text = tok.decode(torch.cat(rows).tolist() + loader.parts[0].stream.tolist())
    seen = text.split("<|endoftext|>")[:-1]
    train_docs = [d for d in docs if not is_heldout(d, 7)]
    assert sorted(seen) == sorted(train_docs) and seen != train_docs


@pytest.mark.parametrize("k", [3, 4, 55])  # mid phase 0, first step of phase 1 (512 tokens), inside epoch 2
def test_resume_is_exact(corpus, tmp_path, k):
    root, _ = corpus
    cfg = data_cfg(root, shuffle_buffer=4)
    tok = build_tokenizer(cfg)
    def make():
        return TrainLoader(cfg, tok, tokens_per_step=128, grad_accum=2, max_seq_len=64)
    ref = make()
    want = [step_hash(ref.next_step()) for _ in range(60)]
    assert ref.parts[0].docs.epoch >= 1  # the run crosses epochs, so resume is tested there too
    a = make()
    got = [step_hash(a.next_step()) for _ in range(k)]
    torch.save(a.state_dict(), tmp_path / "data.pt")
    b = make()
    b.load_state_dict(torch.load(tmp_path / "data.pt", weights_only=True))
    assert (b.tokens_seen, b.seq_len) == (a.tokens_seen, a.seq_len)
    got += [step_hash(b.next_step()) for _ in range(60 - k)]
    assert got == want


def test_resume_while_draining_the_buffer(corpus, tmp_path):
    root, _ = corpus
    cfg = data_cfg(root, shuffle_buffer=30, curriculum="8:inf")
    tok = build_tokenizer(cfg)
    def make():
        return TrainLoader(cfg, tok, tokens_per_step=64)
    ref = make()
    want = [step_hash(ref.next_step()) for _ in range(80)]
    a = make()
    got = []
    while not a.parts[0].docs.source_done:
        got.append(step_hash(a.next_step()))
    sd = a.state_dict()
    assert sd["parts"][0]["docs"]["source_done"] and sd["parts"][0]["docs"]["shuffler"]["buffer"]
    b = make()
    b.load_state_dict(sd)
    got += [step_hash(b.next_step()) for _ in range(80 - len(got))]
    assert got == want


def test_validation_is_fixed_and_held_out(corpus):
    root, docs = corpus
    cfg = data_cfg(root, val_every=3)
    tok = build_tokenizer(cfg)
    v1 = build_val_batches(cfg, tok, seq_len=16, micro_batch_size=2, n_batches=3)
    v2 = build_val_batches(cfg, tok, seq_len=16, micro_batch_size=2, n_batches=3)
    assert len(v1) == 3 and all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(v1, v2))
    heldout = [d for d in docs if is_heldout(d, 3)]
    assert 0 < len(heldout) < len(docs)
    assert tok.decode(v1[0]["input_ids"][0].tolist()) == heldout[0][:16]
    # ranks get disjoint rows of the same held-out stream
    r0 = build_val_batches(cfg, tok, seq_len=16, micro_batch_size=1, n_batches=2, rank=0, world_size=2)
    r1 = build_val_batches(cfg, tok, seq_len=16, micro_batch_size=1, n_batches=2, rank=1, world_size=2)
    assert torch.equal(r0[0]["input_ids"][0], v1[0]["input_ids"][0])
    assert torch.equal(r1[0]["input_ids"][0], v1[0]["input_ids"][1])


def test_user_errors_name_the_key(tmp_path, monkeypatch):
    import huggingface_hub.constants

    with pytest.raises(FileNotFoundError, match="data.source"):
        check_source(DataConfig(source=str(tmp_path / "missing.jsonl")))
    with pytest.raises(FileNotFoundError, match="data.tokenizer"):
        check_source(DataConfig(tokenizer=str(tmp_path / "tok")))
    # a Hub id is opened like a local source (tests/test_hub_ids.py, against a local Hub); out of reach
    # (here: HF_HUB_OFFLINE, so no request leaves this machine) it is one line naming the key
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="data.source: 'some-org/some-dataset'.*HF_HUB_OFFLINE"):
        check_source(DataConfig(source="some-org/some-dataset"))
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    cfg = data_cfg(tmp_path, curriculum="4:inf")
    with pytest.raises(ConfigError, match="data.text_field"):
        TrainLoader(cfg, build_tokenizer(cfg), tokens_per_step=4).next_step()
    with pytest.raises(ConfigError, match="train.tokens_per_step"):
        TrainLoader(cfg, build_tokenizer(cfg), tokens_per_step=6)
    with pytest.raises(FileNotFoundError, match="data.tokenizer"):
        build_tokenizer(DataConfig(tokenizer=str(tmp_path / "nope")))


def test_stdlib_corpus_is_sorted_and_excludes_installed_packages():
    files = stdlib_files()
    assert files == sorted(files) and 300 < len(files) < 3000
    assert not any("site-packages" in f or "/test/" in f for f in files)


def test_val_source_feeds_validation_and_training_holds_nothing_out(corpus, tmp_path):
    """Issue 10: with data.val_source, validation batches are its documents only, and the training
    stream is every document of data.source (data.val_every is not used)."""
    root, docs = corpus
    val_dir = tmp_path / "val"
    val_dir.mkdir()
    val_docs = [f"VALIDATION {i} " + "omega " * (3 + i % 5) for i in range(12)]
    (val_dir / "val.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in val_docs))
    cfg = data_cfg(root, val_every=7, val_source=str(val_dir))
    tok = build_tokenizer(cfg)
    assert any(is_heldout(d, 7) for d in docs)  # without val_source these would be held out

    val = build_val_batches(cfg, tok, seq_len=16, micro_batch_size=2, n_batches=3)
    assert len(val) == 3
    text = tok.decode(torch.cat([b["input_ids"].reshape(-1) for b in val]).tolist())
    want = "<|endoftext|>".join(val_docs) + "<|endoftext|>"
    assert text == want[: len(text)] and text.startswith("VALIDATION 0 ")
    assert not any(d[:6] in text for d in docs)  # no training document's "<f.i> " tag

    loader = TrainLoader(cfg, tok, tokens_per_step=128, grad_accum=2)
    got = torch.cat([b["input_ids"].reshape(-1) for _ in range(12) for b in loader.next_step()]).numpy()
    every_doc = join_documents([list(d.encode()) for d in docs], tok.eos_token_id)
    assert np.array_equal(got, every_doc[: len(got)])

    with pytest.raises(FileNotFoundError, match="data.val_source"):
        check_source(data_cfg(root, val_source=str(tmp_path / "nope.jsonl")), "val_source")
    check_source(cfg, "val_source")  # opened and read with the loader's own code


def test_gzip_source_streams_the_same_tokens_as_the_jsonl_under_it(corpus, tmp_path):
    """Issue 17: ``.jsonl.gz`` shards are read as JSON lines (not refused as "not found"), pass the
    preflight, and give the loader the same token stream as the uncompressed shards."""
    import gzip

    from trainer.data.sources import Source

    root, docs = corpus
    gz = tmp_path / "gz"
    gz.mkdir()
    for f in sorted(root.glob("*.jsonl")):
        (gz / f"{f.name}.gz").write_bytes(gzip.compress(f.read_bytes()))
    cfg = data_cfg(gz, curriculum="32:inf")
    check_source(cfg)
    src = Source.from_config(cfg)
    assert src.builder == "json" and [os.path.basename(f) for f in src.files] == [
        f"shard{i:02d}.jsonl.gz" for i in range(6)]
    assert "shard00.jsonl.gz" in src.identity()
    tok = build_tokenizer(cfg)
    loader = TrainLoader(cfg, tok, tokens_per_step=128, grad_accum=2)
    got = torch.cat([b["input_ids"].reshape(-1) for _ in range(6) for b in loader.next_step()]).numpy()
    train_docs = [d for d in docs if not is_heldout(d, 7)]
    want = join_documents([list(d.encode()) for d in train_docs], tok.eos_token_id)
    assert len(want) > len(got) and np.array_equal(got, want[: len(got)])


def test_non_string_text_after_the_preflight_records_is_refused_by_the_reader(tmp_path):
    """Issue 17: the preflight reads only the first records; a ``null`` text further on is refused
    where the workers read it (a ValueError, one line exit 2 in a worker), naming the file and line,
    instead of being trained as the document "None"."""
    path = tmp_path / "late.jsonl"
    lines = [json.dumps({"text": f"document {i} " * 8}) for i in range(200)]
    lines[150] = json.dumps({"text": None, "id": 150})
    path.write_text("\n".join(lines) + "\n")
    cfg = data_cfg(path, curriculum="64:inf")
    check_source(cfg)  # the first records are fine
    loader = TrainLoader(cfg, build_tokenizer(cfg), tokens_per_step=64)
    with pytest.raises(ConfigError, match=f"data.source: '{path}' line 151 has 'text': null, not a string"):
        for _ in range(200):
            loader.next_step()
