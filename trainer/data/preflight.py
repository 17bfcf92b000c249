"""The data's checks before any worker starts: a source (local files or a Hub dataset) is opened with
the loader's own ``Source.open``, its first records are read and tokenized; a ``data.tokenizer`` path
must load. Called by ``scaleout train``'s preflight (``trainer/cli/preflight.py``); raises
``ConfigError`` or ``FileNotFoundError`` with one line naming the key and the fix."""

from __future__ import annotations

import logging
import os

from trainer.config.base import ConfigError
from trainer.data.files import format_of_path, open_bytes, split_compression
from trainer.data.sources import Source, text_of
from trainer.data.tokenizer import build_tokenizer

PREFLIGHT_FILES = 4  # files opened by check_source
PREFLIGHT_DOCS = 4  # non-empty documents it reads (and tokenizes) before it is satisfied
PREFLIGHT_RECORDS = 64  # records it reads at most looking for them


def check_source(cfg, field: str = "source", tokenizer=None) -> None:
    """Preflight for the CLI (before any worker starts); raises ``ConfigError``/``FileNotFoundError``.

    Local files are opened with the loader's own ``Source.open`` and the first few records are
    read and tokenized, so a wrong ``data.format``, a missing ``data.text_field``, a malformed or
    binary record or an empty source fails here in one line. Cheap: a few files, a few records.
    A Hub dataset is opened the same way, through the Hub (a missing repo, or a Hub out of reach, is
    one line). The embedded corpus is known good: it is only resolved.
    ``field`` picks ``data.source`` or ``data.val_source``; ``tokenizer`` (e.g. ``init.from``'s)
    encodes the records, else ``data.tokenizer`` is checked and used."""
    source = Source.from_config(cfg, field)
    tok = tokenizer if tokenizer is not None else check_tokenizer(cfg)
    name = getattr(cfg, field)
    if name == "stdlib":
        return
    if source.hub_id is not None:
        texts, ended = _first_texts(source)
        if not texts and ended:
            raise ConfigError(f"{source.key}: the Hub dataset '{name}' (split '{cfg.split}') holds no non-empty "
                              f"documents in column data.text_field='{cfg.text_field}'; check the dataset, "
                              "data.split or data.text_field")
        if tok is not None and texts:
            tok(texts)
        return
    nonempty = [f for f in source.files if os.path.getsize(f) > 0]
    if not nonempty:
        raise ConfigError(f"{source.key}: '{name}' is empty ({len(source.files)} empty file(s)); "
                          "point it at files that hold documents")
    texts, _ = _first_texts(Source(cfg, nonempty[:PREFLIGHT_FILES], source.builder, None, field))
    if not texts and len(nonempty) <= PREFLIGHT_FILES:
        raise ConfigError(f"{source.key}: '{name}' holds no non-empty documents in column "
                          f"data.text_field='{cfg.text_field}'; check the files or data.text_field")
    if tok is not None and texts:
        tok(texts)  # a tokenizer that loads but cannot encode fails here, not in a worker


def check_tokenizer(cfg):
    """A ``data.tokenizer`` path must load as a tokenizer (returned); 'bpe' and 'bytes' return None."""
    if cfg.tokenizer in ("bpe", "bytes"):
        return None
    fix = "use bpe, bytes, a tokenizer directory (save_pretrained output) or a tokenizer.json file"
    if not os.path.exists(os.path.expanduser(cfg.tokenizer)):
        raise FileNotFoundError(f"data.tokenizer: '{cfg.tokenizer}' not found; {fix}")
    try:
        return build_tokenizer(cfg)
    except ConfigError:
        raise
    except Exception as e:  # tokenizers/transformers raise many kinds; the user needs one line
        raise ConfigError(f"data.tokenizer: '{cfg.tokenizer}' is not a tokenizer ({type(e).__name__}: "
                          f"{_first_line(e)}); {fix}") from None


def _first_texts(source: Source) -> tuple[list[str], bool]:
    """Up to PREFLIGHT_DOCS non-empty documents from the first records of ``source``, and whether the
    source ended before they were found."""
    texts: list[str] = []
    # datasets logs a traceback per failed JSON parse, huggingface_hub a line for a dataset card without
    # metadata: we report one line
    quiet = [logging.getLogger(name) for name in ("datasets", "huggingface_hub")]
    levels = [log.level for log in quiet]
    for log in quiet:
        log.setLevel(logging.CRITICAL)
    ended = True
    try:
        for i, ex in enumerate(source.open()):
            text = text_of(ex, source.cfg.text_field, source)
            texts += [text] if text else []
            if len(texts) >= PREFLIGHT_DOCS or i + 1 >= PREFLIGHT_RECORDS:
                ended = False
                break
    except ConfigError as e:
        if source.key == "data.source" or str(e).startswith(source.key):
            raise
        raise ConfigError(f"{source.key}: {e}") from None  # say which source lacks data.text_field
    except Exception as e:  # datasets/pyarrow/json errors: find the file (and line) to name
        if source.hub_id is not None:
            raise ConfigError(f"{source.key}: cannot read the Hub dataset '{source.hub_id}' ({type(e).__name__}: "
                              f"{_first_line(e)}); check its files (hf download {source.hub_id} --repo-type "
                              "dataset) or give local files") from None
        raise ConfigError(_read_error(source, e)) from None
    finally:
        for log, level in zip(quiet, levels):
            log.setLevel(level)
    return texts, ended


def _read_error(source: Source, err: Exception) -> str:
    """One line for a source that failed to read: the file (and line for JSON) and the fix."""
    for path in source.files:
        try:
            problem = _file_problem(source, path)
        except Exception as e:  # only a compressed file can fail to open as bytes here
            compression = split_compression(path)[1]
            if compression is None:
                raise
            problem = (f"{source.key}: '{path}' does not decompress as {compression} ({type(e).__name__}: "
                       f"{_first_line(e)}); re-create or remove that file")
        if problem:
            return problem
    guess = format_of_path(source.files[0])
    fix = (f"set data.format to {guess} (the files' extension)" if guess and guess != source.builder
           else "check data.format and the files")
    return (f"{source.key}: cannot read '{source.files[0]}' as data.format={source.builder} "
            f"({type(err).__name__}: {_first_line(err)}); {fix}")


def _file_problem(source: Source, path: str) -> str | None:
    """The one line for ``path`` when it is binary or holds a malformed JSON line, else None."""
    guess = format_of_path(path)
    if source.builder != "parquet" and _is_binary(path):
        fix = (f"set data.format to {guess}" if guess not in (None, "text", source.builder)
               else f"remove it from {source.key}")
        kind = "UTF-8 text" if source.builder == "text" else f"{source.builder} text"
        return f"{source.key}: '{path}' is binary, not {kind}; {fix}"
    where = _bad_json_line(path) if source.builder == "json" else None
    return f"{source.key}: {where}; fix or remove that record" if where else None


def _bad_json_line(path: str, max_lines: int = 10_000) -> str | None:
    """"'FILE' line N is not valid JSON (...)" for the first bad line of a JSON(-lines) file, else None."""
    import json

    with open_bytes(path) as f:  # decompressed, as the loader reads it
        text = f.read(64 << 20).decode("utf-8", errors="replace")
    try:
        json.loads(text)
        return None  # one JSON document: readable, so the trouble is its shape, not its syntax
    except ValueError as e:
        if text.lstrip().startswith("["):  # a list of records: the parser knows the line
            return f"'{path}' line {e.lineno} is not valid JSON ({e.msg})"
    for n, line in enumerate(text.splitlines()[:max_lines], 1):
        if line.strip():
            try:
                json.loads(line)
            except ValueError as e:
                return f"'{path}' line {n} is not valid JSON ({e.msg})"
    return None


def _is_binary(path: str) -> bool:
    with open_bytes(path) as f:  # a .gz file is binary; what it holds may well be text
        chunk = f.read(4096)
    if b"\0" in chunk:
        return True
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(chunk) - 4  # a multi-byte character cut at the chunk's end is fine
    return False


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else "")[:200]
