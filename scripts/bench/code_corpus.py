"""The convergence benchmark's corpus: the Python sources of the installed site-packages.

The stdlib corpus is too small for a token-budget comparison (a run would see its files again), so
this one takes every ``*.py`` file of this environment's site-packages (the stack ``constraints.txt``
pins, so the same files everywhere it is installed), and makes documents a loader can stream fairly:

- pinned: the sorted relative paths and each file's sha256 make the manifest; its hash names the
  corpus, and a different environment gives a different name (said in the report);
- exact duplicates removed (vendored copies, identical ``__init__.py`` files), empty files dropped;
- long files cut into pieces of at most ``PIECE_CHARS`` characters at line boundaries: the loader
  streams a document contiguously, and one 2 MB file would fill hundreds of consecutive steps;
- validation: whole files (all their pieces) held out by a hash of the path, 1 in ``VAL_EVERY``;
- the training pieces dealt in a hash order into ``SHARDS`` jsonl files, so that pieces of one file
  land far apart and every data partition gets its own files.

``build(out_dir)`` writes ``train/*.jsonl``, ``val.jsonl``, ``manifest.json`` (file list, hashes,
counts) and ``tokenizer.json`` (the trainer's own byte-level BPE, ``trainer.data.tokenizer.train_bpe``,
trained on the training pieces only), then counts the corpus's tokens. Cached: a second call with
the same files returns at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sysconfig

PIECE_CHARS = 8000  # ~2.5k BPE tokens: ~10 rows of 256
MIN_CHARS = 64  # shorter documents (empty __init__.py, one-line shims) are dropped
VAL_EVERY = 100
SHARDS = 64  # = data.partitions' default: one file per partition
BPE_CHARS = 16_000_000  # the tokenizer's training text: every k-th training piece up to this many characters
VERSION = 1  # bump when the recipe above changes


def source_files(root: str) -> list[str]:
    """Every ``*.py`` under ``root``, as sorted relative paths (``__pycache__`` never holds any)."""
    out = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        out += [os.path.relpath(os.path.join(d, f), root) for f in files if f.endswith(".py")]
    return sorted(out)


def pieces(text: str, limit: int = PIECE_CHARS) -> list[str]:
    """``text`` cut at line boundaries into pieces of at most ``limit`` characters (a longer line
    is cut inside)."""
    out, cur, size = [], [], 0
    for line in text.splitlines(keepends=True):
        while len(line) > limit:
            if cur:
                out.append("".join(cur))
                cur, size = [], 0
            out.append(line[:limit])
            line = line[limit:]
        if size + len(line) > limit:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        out.append("".join(cur))
    return [p for p in out if p.strip()]


def is_val(relpath: str) -> bool:
    return int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % VAL_EVERY == 0


def read_documents(root: str) -> tuple[list[dict], dict]:
    """The files as documents ({path, text, sha256}), exact duplicates and near-empty files removed,
    and the manifest (every file read, in order, with its hash; what was dropped and why)."""
    seen, docs = set(), []
    manifest = {"root": root, "files": [], "duplicates": 0, "too_short": 0, "undecodable": 0}
    for rel in source_files(root):
        raw = open(os.path.join(root, rel), "rb").read()
        digest = hashlib.sha256(raw).hexdigest()
        manifest["files"].append([rel, digest])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            manifest["undecodable"] += 1
            continue
        if len(text.strip()) < MIN_CHARS:
            manifest["too_short"] += 1
        elif digest in seen:
            manifest["duplicates"] += 1
        else:
            seen.add(digest)
            docs.append({"path": rel, "text": text, "sha256": digest})
    manifest["hash"] = hashlib.sha256(json.dumps([VERSION, PIECE_CHARS, MIN_CHARS, VAL_EVERY, SHARDS,
                                                  manifest["files"]]).encode()).hexdigest()[:16]
    return docs, manifest


def split(docs: list[dict]) -> tuple[list[str], list[str]]:
    """(training pieces in hash order, validation pieces in path order). A corpus too small to have
    a held-out file by the hash holds out its first file in hash order."""
    held = {d["path"] for d in docs if is_val(d["path"])} or \
        {min((d["path"] for d in docs), key=lambda p: hashlib.sha256(p.encode()).digest(), default=None)}
    train, val = [], []
    for d in docs:
        (val if d["path"] in held else train).extend(pieces(d["text"]))
    train.sort(key=lambda p: hashlib.sha256(p.encode()).digest())
    return train, val


def write_jsonl(path: str, texts) -> None:
    with open(path, "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def count_tokens(tok, texts: list[str], batch: int = 2048) -> int:
    return sum(len(e.ids) for i in range(0, len(texts), batch) for e in tok.encode_batch(texts[i:i + batch]))


def build(out_dir: str, root: str | None = None, vocab_size: int = 4096, log=print) -> dict:
    """Build (or find, cached by the manifest's hash) the corpus under ``out_dir/<hash>/``; returns
    the manifest's summary with the paths the trainer needs (``source``, ``val_source``, ``tokenizer``)."""
    root = root or sysconfig.get_paths()["purelib"]
    docs, manifest = read_documents(root)
    where = os.path.join(out_dir, f"{manifest['hash']}-v{vocab_size}")
    summary_path = os.path.join(where, "summary.json")
    paths = {"source": os.path.join(where, "train"), "val_source": os.path.join(where, "val.jsonl"),
             "tokenizer": os.path.join(where, "tokenizer.json")}
    if os.path.exists(summary_path):
        return {**json.load(open(summary_path)), **paths}
    from trainer.data.tokenizer import train_bpe

    train, val = split(docs)
    if len(train) < SHARDS or not val:
        raise SystemExit(f"{root}: {len(train)} training and {len(val)} validation pieces; too few for a corpus")
    tmp = where + ".partial"
    os.makedirs(os.path.join(tmp, "train"), exist_ok=True)
    for s in range(SHARDS):
        write_jsonl(os.path.join(tmp, "train", f"{s:03d}.jsonl"), train[s::SHARDS])
    write_jsonl(os.path.join(tmp, "val.jsonl"), val)
    stride = max(1, sum(map(len, train)) // BPE_CHARS)
    log(f"corpus {manifest['hash']}: {len(manifest['files'])} files, {len(docs)} documents, {len(train)} training "
        f"and {len(val)} validation pieces; training the BPE ({vocab_size}) on every {stride}th training piece")
    tok = train_bpe(train[::stride], vocab_size)
    tok.save(os.path.join(tmp, "tokenizer.json"))
    summary = {
        "hash": manifest["hash"], "root": root, "files": len(manifest["files"]), "documents": len(docs),
        "duplicates": manifest["duplicates"], "too_short": manifest["too_short"],
        "undecodable": manifest["undecodable"], "val_files": max(1, sum(is_val(d["path"]) for d in docs)),
        "train_pieces": len(train), "val_pieces": len(val), "train_chars": sum(map(len, train)),
        "val_chars": sum(map(len, val)), "vocab_size": vocab_size,
        "train_tokens": count_tokens(tok, train), "val_tokens": count_tokens(tok, val),
    }
    json.dump(manifest, open(os.path.join(tmp, "manifest.json"), "w"))
    json.dump(summary, open(os.path.join(tmp, "summary.json"), "w"), indent=1)
    shutil.rmtree(where, ignore_errors=True)
    os.rename(tmp, where)
    return {**summary, **paths}
