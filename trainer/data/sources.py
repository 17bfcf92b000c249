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

Compressed files (``a.jsonl.gz``, ``b.txt.bz2``, ``c.json.xz``; ``.zst`` with ``zstandard`` installed)
are read as the format under the compression suffix: ``datasets`` decompresses them while it
streams, with its own table of suffixes, which ``files.split_compression`` reads too.

Every document's text must be a string: a ``null`` or a number in ``data.text_field`` is refused
(``text_of``), naming the file and line where they can be found, rather than trained as "None".
"""

from __future__ import annotations

import glob
import os
import random
import sysconfig
import warnings
import zlib

from trainer.config.base import ConfigError
from trainer.data.files import check_compression, find_non_text, format_of_path, shown
from trainer.data.hub_ids import fetch

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
        >>> ds = src.open(partition=0, partitions=2, epoch=0)   # IterableDataset of dicts
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
        files = _local_files(src, key)
        if files:
            fmt = cfg.format or _format_of(files, key)
            return cls(cfg, files, fmt, None, field)
        if os.path.exists(src) or src.startswith((".", "/", "~")) or any(c in src for c in "*?["):
            raise FileNotFoundError(f"{key}: '{src}' not found or holds no text/json/jsonl/parquet files "
                                    "(.gz/.bz2/.xz compressed or not); give an existing file, directory or glob, "
                                    "'stdlib', or a Hub dataset id")
        return cls(cfg, None, None, src, field)

    def identity(self) -> str:
        """A string that changes when the corpus does (for the tokenizer cache key)."""
        if self.hub_id is not None:
            return f"hub:{self.hub_id}:{self.cfg.split}:{self.cfg.text_field}"
        stats = [f"{f}:{os.path.getsize(f)}:{int(os.path.getmtime(f))}" for f in self.files]
        return f"files:{self.builder}:{self.cfg.text_field}:{self.cfg.text_unit}:" + "|".join(stats)

    def fingerprint(self) -> dict:
        """What the resume compares to say that the source changed: the file list and sizes (a Hub
        dataset: its id and split). Cheap: one stat per file, nothing is read."""
        import hashlib

        if self.hub_id is not None:
            return {"hub": f"{self.hub_id}:{self.cfg.split}"}
        sizes = [(f, os.path.getsize(f)) for f in self.files]
        digest = hashlib.sha256("\n".join(f"{f}\t{n}" for f, n in sizes).encode()).hexdigest()[:16]
        return {"files": len(sizes), "bytes": sum(n for _, n in sizes), "sha": digest}

    def _load(self, files: list[str] | None):
        from datasets import load_dataset

        if self.hub_id is not None:  # missing, private, misspelled, out of reach: one line naming the key
            return fetch(f"{self.key}: '{self.hub_id}' is not a local path", self.hub_id, "dataset", cached=False,
                         download=lambda _: load_dataset(self.hub_id, split=self.cfg.split, streaming=True),
                         fix="give local files, a directory or glob, 'stdlib', or an existing Hub dataset id")
        kwargs = {"sample_by": self.cfg.text_unit} if self.builder == "text" else {}
        return load_dataset(self.builder, data_files=files, split="train", streaming=True, **kwargs)

    def open(self, partition: int = 0, partitions: int = 1, epoch: int = 0, shuffle: bool = False):
        """Data partition ``partition`` of ``partitions`` (``data.partitions``) for ``epoch``: shards permuted
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
        if partitions == 1:
            return ds
        n = ds.num_shards
        if n < partitions:
            warnings.warn(f"{self.key} has {n} shard(s) for {partitions} data partitions: falling back to example "
                          "striding (every partition reads all data and keeps 1 in P); split the data into at least "
                          "data.partitions files or lower data.partitions", stacklevel=2)
            # striding wraps (and would share) the loaded dataset's iterator state: load one of its own
            return split_dataset_by_node(self._load(files), partition, partitions, strategy="examples")
        return split_dataset_by_node(ds, partition, partitions, strategy="shards")


def _local_files(src: str, key: str = "data.source") -> list[str]:
    """The data files ``src`` names (a file, directory or glob), by extension, compressed or not; a
    compressed file that cannot be read here is a ``ConfigError`` rather than a file left out."""
    path = os.path.expanduser(src)
    if os.path.isdir(path):
        found = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
    else:
        found = glob.glob(path, recursive=True) if any(c in path for c in "*?[") else (
            [path] if os.path.isfile(path) else [])
    files = sorted(f for f in found if format_of_path(f))
    for f in files:
        check_compression(f, key)
    return files


def _format_of(files: list[str], key: str = "data.source") -> str:
    fmts = {format_of_path(f) for f in files}
    if len(fmts) != 1:
        raise ConfigError(f"{key} mixes file kinds ({', '.join(sorted(fmts))}); "
                          "point it at one kind or set data.format")
    return fmts.pop()


def text_of(example: dict, field: str, source: Source | None = None) -> str:
    """The document text of one example; a missing column is a config error listing the columns, and
    a text that is not a string (``null``, a number) one naming, where it can, the file and line."""
    try:
        text = example[field]
    except KeyError:
        raise ConfigError(f"data.text_field: column '{field}' not in the data; set data.text_field to one of "
                          f"its columns: {', '.join(sorted(example))}") from None
    if isinstance(text, str):
        return text
    key = source.key if source is not None else "data.source"
    where = find_non_text(source.files, field) if source is not None and source.builder == "json" else None
    what = where or f"a record's '{field}' is {shown(text)}"
    raise ConfigError(f"{key}: {what}, not a string; every record's data.text_field ('{field}') must be a "
                      "string: fix or remove that record")


def iter_documents(source: Source, heldout: bool | None, limit: int | None = None):
    """Documents of the whole source (one process, source order): held-out ones, training ones, or
    (``heldout=None``, a separate validation source) all of them."""
    n = 0
    every = holdout_every(source.cfg)
    for ex in source.open():
        text = text_of(ex, source.cfg.text_field, source)
        if text and (heldout is None or is_heldout(text, every) == heldout):
            yield text
            n += 1
            if limit is not None and n >= limit:
                return
