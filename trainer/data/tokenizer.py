"""Tokenizers: a byte-level BPE trained once on the corpus and cached, raw bytes, or a local one.

Every choice returns a ``transformers.PreTrainedTokenizerFast`` with an EOS token (documents
are joined with it), a BOS token (the same ``<|endoftext|>``, GPT-2 style) and a PAD token,
so it is saved next to the exported model with ``save_pretrained``.

The ``bpe`` tokenizer is trained with ``tokenizers`` on the first ``TRAIN_CHARS`` characters
of the source's *training* documents in source order (held-out documents excluded), which
takes about a second on the stdlib corpus. Training is deterministic for a given input, so
two ranks that both miss the cache produce identical files; each writes to a private
temporary directory and renames it into place (an atomic step on POSIX), and the loser of
the race keeps what it trained (the same). No lock and no barrier are needed. A damaged cache
entry is named in one warning and trained again.

    >>> tok = build_tokenizer(cfg.data)          # trains or loads ~/.cache/scaleout/tokenizers/<hash>/
    >>> ids = tok("def f(): pass")["input_ids"]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings

from trainer.config.base import ConfigError
from trainer.data.sources import Source, holdout_every, iter_documents

EOS = "<|endoftext|>"
PAD = "<|pad|>"
TRAIN_CHARS = 4_000_000
_VERSION = 1  # bump when the training recipe changes, so stale caches are not reused


def default_cache_dir() -> str:
    base = os.environ.get("SCALEOUT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "scaleout")
    return os.path.join(base, "tokenizers")


def _wrap(backend):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, bos_token=EOS, pad_token=PAD)


def bytes_tokenizer():
    """One token per byte (ids 0..255) plus ``<|endoftext|>`` (256) and ``<|pad|>`` (257)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: _BYTE_OF[ch])
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([EOS, PAD])
    return _wrap(backend)


def _byte_map() -> dict[str, int]:
    # GPT-2's printable stand-ins for bytes (the same table tokenizers' ByteLevel uses).
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = list(bs), 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_OF = _byte_map()


def train_bpe(texts, vocab_size: int):
    """A byte-level BPE with ``vocab_size`` entries (specials included), trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer)
    return backend


def _training_texts(cfg):
    total = 0
    for text in iter_documents(Source.from_config(cfg), heldout=False):
        yield text[: TRAIN_CHARS - total]
        total += len(text)
        if total >= TRAIN_CHARS:
            return


def cached_bpe(cfg, cache_dir: str | None = None):
    """Load the BPE for this corpus and vocab size from the cache, training it on a miss. A cached
    file that does not load (truncated by a full disk or a kill: "EOF while parsing a list") is only
    a cache: one warning names it, and it is trained again and replaced."""
    from tokenizers import Tokenizer

    key = json.dumps([_VERSION, cfg.vocab_size, TRAIN_CHARS, holdout_every(cfg),
                      Source.from_config(cfg).identity()])
    root = cache_dir or default_cache_dir()
    final = os.path.join(root, hashlib.sha256(key.encode()).hexdigest()[:16])
    path = os.path.join(final, "tokenizer.json")
    if os.path.exists(path):
        try:
            return Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for a malformed file
            _discard_damaged(final, path, e)
    os.makedirs(root, exist_ok=True)
    backend = train_bpe(_training_texts(cfg), cfg.vocab_size)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
    backend.save(os.path.join(tmp, "tokenizer.json"))
    with open(os.path.join(tmp, "key.json"), "w") as f:
        f.write(key)
    try:
        os.rename(tmp, final)  # atomic; fails if another process got there first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    # What was trained, not a read of the cache: another process may be replacing a damaged entry.
    return Tokenizer.from_str(backend.to_str())


def _discard_damaged(final: str, path: str, error: Exception) -> None:
    """Move a damaged cache entry out of the way (atomically: a peer may be doing the same) and say
    so once, on rank 0."""
    if os.environ.get("RANK", "0") == "0":
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        sys.stderr.write(f"scaleout: warning: the cached tokenizer {path} is damaged ({reason}); "
                         "training it again\n")
    aside = tempfile.mkdtemp(prefix=".damaged-", dir=os.path.dirname(final))
    try:
        os.rename(final, os.path.join(aside, "entry"))
    except OSError:
        pass  # a peer moved it first
    shutil.rmtree(aside, ignore_errors=True)


def build_tokenizer(cfg, cache_dir: str | None = None):
    """The run's tokenizer from ``data.tokenizer``: 'bpe', 'bytes' or a local path."""
    from transformers import PreTrainedTokenizerFast

    name = cfg.tokenizer
    if name == "bpe":
        backend = cached_bpe(cfg, cache_dir)
        if backend.get_vocab_size() < cfg.vocab_size:  # the sample ran out of pairs to merge
            warnings.warn(f"data.vocab_size={cfg.vocab_size} but the corpus sample ({TRAIN_CHARS:,} characters) "
                          f"only supports {backend.get_vocab_size()} tokens; the model uses len(tokenizer)",
                          stacklevel=2)
        return _wrap(backend)
    if name == "bytes":
        return bytes_tokenizer()
    path = os.path.expanduser(name)
    if os.path.isfile(path):
        tok = PreTrainedTokenizerFast(tokenizer_file=path)
    elif os.path.isdir(path):
        tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    else:
        raise FileNotFoundError(f"data.tokenizer: '{name}' not found; use bpe, bytes, a tokenizer directory "
                                "(save_pretrained output) or a tokenizer.json file")
    return _with_eos_and_pad(tok, f"data.tokenizer: '{name}'")


def pretrained_tokenizer(path: str, what: str):
    """The fast tokenizer saved in a model folder (``init.from``), with EOS and PAD as the loader needs;
    ``what`` ("init.from: 'PATH'") starts every error."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if getattr(tok, "backend_tokenizer", None) is None:
        raise ConfigError(f"{what}: its tokenizer ({type(tok).__name__}) has no fast (tokenizers) backend; save "
                          "one with tokenizer.json in the folder")
    return _with_eos_and_pad(tok, what)


def _with_eos_and_pad(tok, what: str):
    if tok.eos_token_id is None:
        if EOS not in tok.get_vocab():
            raise ConfigError(f"{what} has no eos_token; documents are joined with EOS, so save the tokenizer "
                              "with one")
        tok.eos_token = EOS
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
