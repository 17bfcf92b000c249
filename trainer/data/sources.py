"""Where documents come from: the embedded stdlib corpus, local files or a Hub dataset, streamed.

Every source becomes a ``datasets`` ``IterableDataset`` (``streaming=True``) and is split
across ranks with ``datasets.distributed.split_dataset_by_node``:

* whole-shard assignment (``strategy="shards"``) whenever there are at least as many
  shards (files) as ranks, even when the count is not a multiple of the world size:
  ranks then hold one shard more or less, and the loader's collective stop rule copes
  with the uneven lengths. (``datasets``' own "auto" would fall back to striding here.)
* example striding (``strategy="examples"``: every rank reads every shard and keeps one
  example in W) only when there are fewer shards than ranks, with a warning, because
  every rank then pays the full read cost.

Shard order is shuffled per epoch by permuting the file list with a seed derived from
``(data.seed, epoch)`` *before* the split, the same permutation on every rank, so each
epoch the ranks hold disjoint shards that together cover the corpus. A Hub dataset keeps
its own shard order (its file list is not ours to permute without private API); the
loader's document shuffle buffer still mixes it.

Validation hold-out: a document belongs to validation when ``crc32(text) % data.val_every
== 0``. The rule needs no index, works on any stream, and sends duplicate documents to the
same side; training filters those documents out, so it never sees them. With a separate
validation source (``data.val_source``) nothing is held out: training reads every document of
``data.source`` and validation the first ``data.val_docs`` documents of ``data.val_source``.

The embedded corpus (``data.source: stdlib``): the running Python's standard library
``.py`` files, excluding ``site-packages`` (which would make the corpus depend on what is
installed), the ``test``/``tests`` suites and ``__pycache__`` -- about 800 files, 12 MB on
CPython 3.11 -- sorted by path, one document (and one shard) per file.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import sysconfig
import warnings
import zlib

from trainer.configlib import ConfigError

_EXT_FORMAT = {".txt": "text", ".py": "text", ".md": "text", ".json": "json", ".jsonl": "json",
               ".parquet": "parquet"}
_SKIP_DIRS = {"site-packages", "test", "tests", "__pycache__", "idle_test"}


def stdlib_files() -> list[str]:
    """The embedded corpus: sorted stdlib ``.py`` paths (no site-packages, tests or caches)."""
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if x not in _SKIP_DIRS]
        files += [os.path.join(d, n) for n in names if n.endswith(".py")]
    return sorted(files)


def holdout_every(cfg) -> int:
    """The N of "hold out one document in N" for the training source: 0 (nothing) when validation
    has its own source (``data.val_source``), else ``data.val_every``."""
    return 0 if cfg.val_source else cfg.val_every


def is_heldout(text: str, val_every: int) -> bool:
    """True when ``text`` belongs to the validation set (see module docstring)."""
    return val_every > 0 and zlib.crc32(text.encode("utf-8", "replace")) % val_every == 0


class Source:
    """A resolved ``data.source`` (or ``data.val_source``): local files with a ``datasets`` builder, or a Hub id.

        >>> src = Source.from_config(cfg.data)
        >>> ds = src.open(rank=0, world_size=2, epoch=0)   # IterableDataset of dicts
        >>> val = Source.from_config(cfg.data, "val_source")
    """

    def __init__(self, cfg, files: list[str] | None, builder: str | None, hub_id: str | None,
                 field: str = "source"):
        self.cfg, self.files, self.builder, self.hub_id = cfg, files, builder, hub_id
        self.key = f"data.{field}"  # the config key errors name
        self._opened: dict = {}  # (files order, shuffle) -> the loaded dataset, shared by the partitions

    @classmethod
    def from_config(cls, cfg, field: str = "source") -> Source:
        """``data.source``, or another field with the same syntax (``val_source``)."""
        src, key = getattr(cfg, field), f"data.{field}"
        if src == "stdlib":
            files = stdlib_files()
            if not files:
                raise FileNotFoundError(f"{key}: 'stdlib' found no .py files under "
                                        f"{sysconfig.get_paths()['stdlib']}; point {key} at local files")
            return cls(cfg, files, "text", None, field)
        files = _local_files(src)
        if files:
            fmt = cfg.format or _format_of(files, key)
            return cls(cfg, files, fmt, None, field)
        if os.path.exists(src) or src.startswith((".", "/", "~")) or any(c in src for c in "*?["):
            raise FileNotFoundError(f"{key}: '{src}' not found or holds no text/json/jsonl/parquet files; "
                                    "give an existing file, directory or glob, 'stdlib', or a Hub dataset id")
        return cls(cfg, None, None, src, field)

    def identity(self) -> str:
        """A string that changes when the corpus does (for the tokenizer cache key)."""
        if self.hub_id is not None:
            return f"hub:{self.hub_id}:{self.cfg.split}:{self.cfg.text_field}"
        stats = [f"{f}:{os.path.getsize(f)}:{int(os.path.getmtime(f))}" for f in self.files]
        return f"files:{self.builder}:{self.cfg.text_field}:{self.cfg.text_unit}:" + "|".join(stats)

    def _load(self, files: list[str] | None):
        from datasets import load_dataset

        if self.hub_id is not None:
            try:
                return load_dataset(self.hub_id, split=self.cfg.split, streaming=True)
            except Exception as e:  # offline, private, misspelled: say which key to fix
                raise FileNotFoundError(f"{self.key}: '{self.hub_id}' is not a local path and could not be opened "
                                        f"as a Hub dataset ({type(e).__name__}: {e})") from e
        kwargs = {"sample_by": self.cfg.text_unit} if self.builder == "text" else {}
        return load_dataset(self.builder, data_files=files, split="train", streaming=True, **kwargs)

    def open(self, rank: int = 0, world_size: int = 1, epoch: int = 0, shuffle: bool = False):
        """Part ``rank`` of ``world_size`` (a data partition of ``data.partitions``) for ``epoch``: shards permuted
        by (seed, epoch) when ``shuffle``, then split. The loaded dataset is shared by the parts of an epoch."""
        from datasets.distributed import split_dataset_by_node

        files = self.files
        if files is not None and shuffle:
            files = list(files)
            random.Random(f"{self.cfg.seed}:shards:{epoch}").shuffle(files)
        key = (epoch if shuffle else None)
        if key not in self._opened:  # loading resolves every file (seconds); splitting is cheap
            self._opened = {k: v for k, v in self._opened.items() if k is None or k >= (epoch or 0) - 1}
            self._opened[key] = self._load(files)
        ds = self._opened[key]
        if world_size == 1:
            return ds
        n = ds.num_shards
        if n < world_size:
            warnings.warn(f"{self.key} has {n} shard(s) for {world_size} data partitions: falling back to example "
                          "striding (every partition reads all data and keeps 1 in P); split the data into at least "
                          "data.partitions files or lower data.partitions", stacklevel=2)
            # striding wraps (and would share) the loaded dataset's iterator state: load one of its own
            return split_dataset_by_node(self._load(files), rank, world_size, strategy="examples")
        return split_dataset_by_node(ds, rank, world_size, strategy="shards")


PREFLIGHT_FILES = 4  # files opened by check_source
PREFLIGHT_DOCS = 4  # non-empty documents it reads (and tokenizes) before it is satisfied
PREFLIGHT_RECORDS = 64  # records it reads at most looking for them


def check_source(cfg, field: str = "source", tokenizer=None) -> None:
    """Preflight for the CLI (before any worker starts); raises ``ConfigError``/``FileNotFoundError``.

    Local files are opened with the loader's own ``Source.open`` and the first few records are
    read and tokenized, so a wrong ``data.format``, a missing ``data.text_field``, a malformed or
    binary record or an empty source fails here in one line. Cheap: a few files, a few records.
    The embedded corpus is known good and a Hub id needs the network: both are only resolved.
    ``field`` picks ``data.source`` or ``data.val_source``; ``tokenizer`` (e.g. ``init.from``'s)
    encodes the records, else ``data.tokenizer`` is checked and used."""
    source = Source.from_config(cfg, field)
    tok = tokenizer if tokenizer is not None else check_tokenizer(cfg)
    name = getattr(cfg, field)
    if name == "stdlib" or source.files is None:
        return
    nonempty = [f for f in source.files if os.path.getsize(f) > 0]
    if not nonempty:
        raise ConfigError(f"{source.key}: '{name}' is empty ({len(source.files)} empty file(s)); "
                          "point it at files that hold documents")
    texts = _first_texts(Source(cfg, nonempty[:PREFLIGHT_FILES], source.builder, None, field))
    if not texts and len(nonempty) <= PREFLIGHT_FILES:
        raise ConfigError(f"{source.key}: '{name}' holds no non-empty documents in column "
                          f"data.text_field='{cfg.text_field}'; check the files or data.text_field")
    if tok is not None and texts:
        tok(texts)  # a tokenizer that loads but cannot encode fails here, not in a worker


def check_tokenizer(cfg):
    """A ``data.tokenizer`` path must load as a tokenizer (returned); 'bpe' and 'bytes' return None."""
    from trainer.data.tokenizer import build_tokenizer

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


def _first_texts(source: Source) -> list[str]:
    """Up to PREFLIGHT_DOCS non-empty documents from the first records of ``source``."""
    texts: list[str] = []
    quiet = logging.getLogger("datasets")  # it logs a traceback per failed JSON parse; we report one line
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        for i, ex in enumerate(source.open()):
            text = text_of(ex, source.cfg.text_field)
            texts += [text] if text else []
            if len(texts) >= PREFLIGHT_DOCS or i + 1 >= PREFLIGHT_RECORDS:
                break
    except ConfigError as e:
        if source.key == "data.source":
            raise
        raise ConfigError(f"{source.key}: {e}") from None  # say which source lacks data.text_field
    except Exception as e:  # datasets/pyarrow/json errors: find the file (and line) to name
        raise ConfigError(_read_error(source, e)) from None
    finally:
        quiet.setLevel(level)
    return texts


def _read_error(source: Source, err: Exception) -> str:
    """One line for a source that failed to read: the file (and line for JSON) and the fix."""
    for path in source.files:
        guess = _EXT_FORMAT.get(os.path.splitext(path)[1].lower())
        if source.builder != "parquet" and _is_binary(path):
            fix = (f"set data.format to {guess}" if guess not in (None, "text", source.builder)
                   else f"remove it from {source.key}")
            kind = "UTF-8 text" if source.builder == "text" else f"{source.builder} text"
            return f"{source.key}: '{path}' is binary, not {kind}; {fix}"
        where = _bad_json_line(path) if source.builder == "json" else None
        if where:
            return f"{source.key}: {where}; fix or remove that record"
    guess = _EXT_FORMAT.get(os.path.splitext(source.files[0])[1].lower())
    fix = (f"set data.format to {guess} (the files' extension)" if guess and guess != source.builder
           else "check data.format and the files")
    return (f"{source.key}: cannot read '{source.files[0]}' as data.format={source.builder} "
            f"({type(err).__name__}: {_first_line(err)}); {fix}")


def _bad_json_line(path: str, max_lines: int = 10_000) -> str | None:
    """"'FILE' line N is not valid JSON (...)" for the first bad line of a JSON(-lines) file, else None."""
    import json

    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(64 << 20)
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
    with open(path, "rb") as f:
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


def _local_files(src: str) -> list[str]:
    path = os.path.expanduser(src)
    if os.path.isdir(path):
        found = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
    else:
        found = glob.glob(path, recursive=True) if any(c in path for c in "*?[") else (
            [path] if os.path.isfile(path) else [])
    return sorted(f for f in found if os.path.splitext(f)[1].lower() in _EXT_FORMAT)


def _format_of(files: list[str], key: str = "data.source") -> str:
    fmts = {_EXT_FORMAT[os.path.splitext(f)[1].lower()] for f in files}
    if len(fmts) != 1:
        raise ConfigError(f"{key} mixes file kinds ({', '.join(sorted(fmts))}); "
                          "point it at one kind or set data.format")
    return fmts.pop()


def text_of(example: dict, field: str) -> str:
    """The document text of one example; a missing column is a config error listing the columns."""
    try:
        text = example[field]
    except KeyError:
        raise ConfigError(f"data.text_field: column '{field}' not in the data; set data.text_field to one of "
                          f"its columns: {', '.join(sorted(example))}") from None
    return text if isinstance(text, str) else str(text)


def iter_documents(source: Source, heldout: bool | None, limit: int | None = None):
    """Documents of the whole source (one process, source order): held-out ones, training ones, or
    (``heldout=None``, a separate validation source) all of them."""
    n = 0
    every = holdout_every(source.cfg)
    for ex in source.open():
        text = text_of(ex, source.cfg.text_field)
        if text and (heldout is None or is_heldout(text, every) == heldout):
            yield text
            n += 1
            if limit is not None and n >= limit:
                return
