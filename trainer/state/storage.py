"""Storage faults while a run writes its own files (a checkpoint, an export): caught, named and
agreed by every rank.

A write that fails (disk full, an I/O error, no permission: any ``OSError``) on one rank must not
leave the others waiting in the next collective, and must not read as a library's error:
``torch.save`` reports a full disk as "[enforce fail at inline_container.cc] unexpected pos",
``tokenizers`` as a bare ``Exception`` "(os error 28)". So each rank runs its writes through
``attempt`` (the failure becomes a small dict: path, errno, strerror), ``agree`` all-gathers it (every
rank learns the first failing rank's), and the caller cleans up and raises ``StorageError`` on
every rank (``trainer/launch/exit_codes.py``: exit 74, one line).

    failure = attempt(write_my_files, tmp)        # None, or {"path", "errno", "strerror"}
    failure = agree(failure)                      # collective: the same on every rank
    if failure:
        raise StorageError(describe(failure, "saving checkpoint step 8"))
"""

from __future__ import annotations

import errno
import os
import re
import shutil

import torch
import torch.distributed as dist

_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust libraries (tokenizers, safetensors) say it


class _Sink:
    """The file ``torch.save`` writes through: remembers the ``OSError`` of a failed write, which
    torch itself turns into an "unexpected pos" ``RuntimeError``."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_torch(obj, path: str) -> None:
    """``torch.save(obj, path)``, a failed write raised as the ``OSError`` it is (with ``path``), also
    when it is the final flush, at ``close``, that finds the disk full."""
    try:
        with open(path, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(obj, sink)
            except RuntimeError:
                if sink.error is None:
                    raise
                raise OSError(sink.error.errno, sink.error.strerror, path) from None
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror, path) from None


def as_failure(e: BaseException, path: str) -> dict | None:
    """``e`` as ``{"path", "errno", "strerror"}`` when it is a failed write (an ``OSError``, or a Rust
    library's "(os error N)"); None otherwise."""
    if isinstance(e, OSError) and e.errno is not None:
        return {"path": str(e.filename or path), "errno": e.errno, "strerror": e.strerror or os.strerror(e.errno)}
    m = _OS_ERROR.search(str(e))
    if m:
        code = int(m.group(1))
        return {"path": path, "errno": code, "strerror": os.strerror(code)}
    return None


def naming(path: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, which writes ``path``; a failed write is raised as an ``OSError`` that
    names ``path`` (Python's own file writes and Rust libraries name none)."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 -- narrowed right below: only failed writes are renamed
        failure = as_failure(e, path)
        if failure is None:
            raise
        raise OSError(failure["errno"], failure["strerror"], failure["path"]) from None


def attempt(fn, path: str, *args, **kwargs) -> dict | None:
    """Run ``fn(*args, **kwargs)``, which writes under ``path``; its failed write as a failure dict
    (``as_failure``), or None. Any other exception propagates."""
    try:
        fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 -- narrowed right below: only failed writes are kept
        failure = as_failure(e, path)
        if failure is None:
            raise
        return failure
    return None


def agree(failure):
    """The first rank's failure (by rank; a failure dict or a message), the same on every rank; None
    when every write succeeded. A collective (one ``all_gather_object``) when a process group is up."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return failure
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, failure)
    return next((f for f in gathered if f is not None), None)


def cause(failure: dict) -> str:
    """'No space left on device (ENOSPC)'."""
    return f"{failure['strerror']} ({errno.errorcode.get(failure['errno'], failure['errno'])})"


def tree_bytes(path: str) -> int:
    """The bytes of every file under ``path`` (0 when it is gone)."""
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names
               if os.path.isfile(os.path.join(d, n)))


def free_bytes(path: str) -> int:
    """Free bytes (for this user) on the filesystem of ``path`` or its nearest existing ancestor."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def human_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"
