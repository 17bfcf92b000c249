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
same side; training filters those documents out, so it never sees them.

The embedded corpus (``data.source: stdlib``): the running Python's standard library
``.py`` files, excluding ``site-packages`` (which would make the corpus depend on what is
installed), the ``test``/``tests`` suites and ``__pycache__`` -- about 800 files, 12 MB on
CPython 3.11 -- sorted by path, one document (and one shard) per file.
"""

from __future__ import annotations

import glob
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


def is_heldout(text: str, val_every: int) -> bool:
    """True when ``text`` belongs to the validation set (see module docstring)."""
    return val_every > 0 and zlib.crc32(text.encode("utf-8", "replace")) % val_every == 0


class Source:
    """A resolved ``data.source``: local files with a ``datasets`` builder, or a Hub id.

        >>> src = Source.from_config(cfg.data)
        >>> ds = src.open(rank=0, world_size=2, epoch=0)   # IterableDataset of dicts
    """

    def __init__(self, cfg, files: list[str] | None, builder: str | None, hub_id: str | None):
        self.cfg, self.files, self.builder, self.hub_id = cfg, files, builder, hub_id

    @classmethod
    def from_config(cls, cfg) -> Source:
        src = cfg.source
        if src == "stdlib":
            files = stdlib_files()
            if not files:
                raise FileNotFoundError("data.source: 'stdlib' found no .py files under "
                                        f"{sysconfig.get_paths()['stdlib']}; point data.source at local files")
            return cls(cfg, files, "text", None)
        files = _local_files(src)
        if files:
            fmt = cfg.format or _format_of(files)
            return cls(cfg, files, fmt, None)
        if os.path.exists(src) or src.startswith((".", "/", "~")) or any(c in src for c in "*?["):
            raise FileNotFoundError(f"data.source: '{src}' not found or holds no text/json/jsonl/parquet files; "
                                    "give an existing file, directory or glob, 'stdlib', or a Hub dataset id")
        return cls(cfg, None, None, src)

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
                raise FileNotFoundError(f"data.source: '{self.hub_id}' is not a local path and could not be opened "
                                        f"as a Hub dataset ({type(e).__name__}: {e})") from e
        kwargs = {"sample_by": self.cfg.text_unit} if self.builder == "text" else {}
        return load_dataset(self.builder, data_files=files, split="train", streaming=True, **kwargs)

    def open(self, rank: int = 0, world_size: int = 1, epoch: int = 0, shuffle: bool = False):
        """This rank's stream for ``epoch``: shards permuted by (seed, epoch) when ``shuffle``, then split."""
        from datasets.distributed import split_dataset_by_node

        files = self.files
        if files is not None and shuffle:
            files = list(files)
            random.Random(f"{self.cfg.seed}:shards:{epoch}").shuffle(files)
        ds = self._load(files)
        if world_size == 1:
            return ds
        n = ds.num_shards
        if n < world_size:
            warnings.warn(f"data.source has {n} shard(s) for {world_size} ranks: falling back to example striding "
                          "(every rank reads all data and keeps 1 in W); split the data into more files", stacklevel=2)
            return split_dataset_by_node(ds, rank, world_size, strategy="examples")
        return split_dataset_by_node(ds, rank, world_size, strategy="shards")


def check_source(cfg) -> None:
    """Preflight for the CLI (before any worker starts): the source and a tokenizer path exist.

    Cheap: resolves paths only, opens nothing (a Hub id is checked when it is opened)."""
    Source.from_config(cfg)
    if cfg.tokenizer not in ("bpe", "bytes") and not os.path.exists(os.path.expanduser(cfg.tokenizer)):
        raise FileNotFoundError(f"data.tokenizer: '{cfg.tokenizer}' not found; use bpe, bytes, a tokenizer "
                                "directory (save_pretrained output) or a tokenizer.json file")


def _local_files(src: str) -> list[str]:
    path = os.path.expanduser(src)
    if os.path.isdir(path):
        found = [os.path.join(d, n) for d, _, names in os.walk(path) for n in names]
    else:
        found = glob.glob(path, recursive=True) if any(c in path for c in "*?[") else (
            [path] if os.path.isfile(path) else [])
    return sorted(f for f in found if os.path.splitext(f)[1].lower() in _EXT_FORMAT)


def _format_of(files: list[str]) -> str:
    fmts = {_EXT_FORMAT[os.path.splitext(f)[1].lower()] for f in files}
    if len(fmts) != 1:
        raise ConfigError(f"data.source mixes file kinds ({', '.join(sorted(fmts))}); "
                          "point it at one kind or set data.format")
    return fmts.pop()


def text_of(example: dict, field: str) -> str:
    """The document text of one example; a missing column is a config error listing the columns."""
    try:
        text = example[field]
    except KeyError:
        raise ConfigError(f"data.text_field: column '{field}' not in the data; columns are "
                          f"{', '.join(sorted(example))}") from None
    return text if isinstance(text, str) else str(text)


def iter_documents(source: Source, heldout: bool, limit: int | None = None):
    """Documents of the whole source (one process, source order): held-out ones or training ones."""
    n = 0
    for ex in source.open():
        text = text_of(ex, source.cfg.text_field)
        if text and is_heldout(text, source.cfg.val_every) == heldout:
            yield text
            n += 1
            if limit is not None and n >= limit:
                return
