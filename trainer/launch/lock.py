"""One run per ``train.out_dir``: ``RunLock`` (an ``flock`` on ``<out_dir>/.lock``)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time


class RunLocked(ValueError):
    """``train.out_dir`` is held by a live run; the same on every rank."""

    same_on_every_rank = True


class RunLock:
    """One run per ``train.out_dir``: ``<out_dir>/.lock`` names the holder (host, pid, since) and
    an ``fcntl.flock`` on it says whether the holder lives (the kernel drops it when it dies).

        lock = RunLock("runs/tiny")
        warning = lock.acquire()   # RunLocked if a live run holds it; a warning for a dead one
        ...
        lock.release()             # empties the file: an empty unlocked file is a free out_dir

    The file is never deleted: removing it would let two runs lock two different files."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, ".lock")
        self.fd = None

    def acquire(self) -> str | None:
        os.makedirs(self.out_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._read(fd)
            os.close(fd)
            raise RunLocked(f"train.out_dir '{self.out_dir}' is in use by the run of {self._who(holder)}; "
                            "stop that run or choose another train.out_dir") from None
        previous = self._read(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)
        os.fsync(fd)
        self.fd = fd
        if previous:
            return f"took over train.out_dir '{self.out_dir}' from a run that is gone ({self._who(previous)})"
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    @staticmethod
    def _read(fd) -> dict:
        try:
            return json.loads(os.pread(fd, 4096, 0) or b"{}")
        except ValueError:
            return {"host": "?", "pid": "?", "since": "?"}

    @staticmethod
    def _who(holder: dict) -> str:
        return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('since', '?')}"
