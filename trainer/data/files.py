"""What a local data file is: its format by extension, under a compression suffix that ``datasets``
decompresses while streaming (``a.jsonl.gz`` is JSON lines), its bytes as the loader reads them, and
where in it a record breaks a rule (so an error can name the file and line).

    >>> split_compression("data/a.jsonl.gz")
    ('data/a.jsonl', 'gzip')
    >>> format_of_path("data/a.jsonl.gz")
    'json'
"""

from __future__ import annotations

import json
import os

from trainer.config.base import ConfigError

EXT_FORMAT = {".txt": "text", ".py": "text", ".md": "text", ".json": "json", ".jsonl": "json",
              ".parquet": "parquet"}
_PIP_FOR = {"zstd": "zstandard", "lz4": "lz4"}  # compressions whose fsspec codec needs a package
NOT_TEXT_SCAN_BYTES = 64 << 20  # how much of the files a non-string text is looked for in, to name its line


def split_compression(path: str) -> tuple[str, str | None]:
    """``("a.jsonl", "gzip")`` for ``"a.jsonl.gz"``: the path less a single-file compression suffix that
    ``datasets`` decompresses while streaming (its own table), and that compression; else ``(path, None)``."""
    stem, ext = os.path.splitext(path)
    if not ext or ext.lower() in EXT_FORMAT:
        return path, None  # the common case, without importing datasets
    from datasets.utils.file_utils import SINGLE_FILE_COMPRESSION_EXTENSION_TO_PROTOCOL

    compression = SINGLE_FILE_COMPRESSION_EXTENSION_TO_PROTOCOL.get(ext.lower().lstrip("."))
    return (stem, compression) if compression else (path, None)


def format_of_path(path: str) -> str | None:
    """The ``datasets`` builder a file's extension asks for (under any compression suffix), or None."""
    return EXT_FORMAT.get(os.path.splitext(split_compression(path)[0])[1].lower())


def open_bytes(path: str):
    """The file's bytes as the loader reads them, decompressed (``with open_bytes(p) as f:``)."""
    import fsspec

    return fsspec.open(path, "rb", compression=split_compression(path)[1])


def check_compression(path: str, key: str) -> None:
    """A compressed file the loader cannot read is a ``ConfigError`` naming ``key`` and the fix, not a
    file left out of the source (which would read as "not found")."""
    import fsspec.compression

    compression = split_compression(path)[1]
    if compression is None:
        return
    if compression not in fsspec.compression.compr:  # fsspec registers a codec only when its package imports
        pkg = _PIP_FOR.get(compression, compression)
        raise ConfigError(f"{key}: '{path}' is {compression}-compressed, which needs the {pkg} package; "
                          f"pip install {pkg}, or decompress the file")
    if format_of_path(path) == "parquet":
        raise ConfigError(f"{key}: '{path}' is a compressed parquet file, which cannot be streamed; decompress "
                          "it (parquet compresses its own columns)")


def find_non_text(files: list[str] | None, field: str, max_bytes: int = NOT_TEXT_SCAN_BYTES) -> str | None:
    """``"'FILE' line N has 'text': null"`` for the first JSON(-lines) record whose ``field`` is not a
    string, looking at the first ``max_bytes`` of the files in order; None when none is found there."""
    for path in files or []:
        with open_bytes(path) as f:
            text = f.read(max_bytes).decode("utf-8", errors="replace")
        max_bytes -= len(text)
        for where, rec in _json_records(text):
            value = rec.get(field, _MISSING) if isinstance(rec, dict) else None
            if isinstance(rec, dict) and not isinstance(value, str):
                what = f"no '{field}'" if value is _MISSING else f"'{field}': {shown(value)}"
                return f"'{path}' {where} has {what}"
        if max_bytes <= 0:
            break
    return None


_MISSING = object()


def _json_records(text: str):
    """(where, record) for a JSON list of records ("record N") or JSON lines ("line N"); lines that do
    not parse are left to the reader, which names them itself."""
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError:
            return
        yield from ((f"record {i}", r) for i, r in enumerate(records if isinstance(records, list) else [], 1))
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield f"line {n}", json.loads(line)
            except ValueError:
                continue


def shown(value) -> str:
    """A record's value as it reads in the file (``null``, ``123``), cut short for one line."""
    return json.dumps(value, default=repr)[:60]
