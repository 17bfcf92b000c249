"""Data off the critical path: a background thread prepares step k+1's micro-batches while step k trains.

Only local work runs on the thread: reading, tokenizing and packing (``TrainLoader.fill_step`` and
``cut_step``), and pinning the batches when CUDA is present so the copy to the device can be
``non_blocking``. The agreement that every rank has a full step is a collective (gloo/NCCL
all-reduce); it stays on the main thread, in ``next_step``, so it never runs concurrently with the
main thread's own collectives and keeps the same order on every rank.

Exact resume: the thread runs ahead of what training has consumed, so the live loader's state is
not the position to save. Each prefetched step carries a snapshot of the loader state taken right
after it was cut; ``state_dict()`` returns the snapshot of the last step *consumed* (the loader's
own state before the first step), which is exactly what ``TrainLoader.state_dict()`` returned
without prefetching.

    >>> loader = Prefetcher(TrainLoader(cfg.data, tok, tokens_per_step=8192, max_seq_len=1024),
    ...                     pin=torch.cuda.is_available())
    >>> for batch in loader.next_step():      # as TrainLoader.next_step, one step ahead in the background
    ...     model(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).loss.backward()
    >>> loader.state_dict()                   # the consumed position (a checkpoint saves it per partition)
    >>> loader.close()
"""

from __future__ import annotations

import copy
import queue
import threading

from trainer.data.curriculum import micro_batch_size, phase_at
from trainer.data.loader import TrainLoader, all_ranks_agree


class Prefetcher:
    """``TrainLoader``'s interface (``next_step``, ``state_dict``, ``load_state_dict``, ``phase``,
    ``seq_len``, ``micro_batch_size``, ``tokens_seen``, ``step``, ``last_rows``) with one step prepared ahead.
    The properties describe the next step ``next_step()`` returns, as the loader's do."""

    def __init__(self, loader: TrainLoader, pin: bool = False, depth: int = 1):
        self.loader, self.pin, self.depth = loader, pin, depth
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._state: dict | None = None  # the loader state after the last consumed step, once started
        self._exhausted = False
        self.tokens_seen, self.step = loader.tokens_seen, loader.step
        self.last_rows: list[int] = []

    # -- the next step's shape, from the consumed position (the thread's loader is ahead) ----
    @property
    def _phase(self):
        return phase_at(self.loader.phases, self.tokens_seen)

    @property
    def phase(self) -> int:
        return self._phase.index

    @property
    def seq_len(self) -> int:
        return self._phase.seq_len

    @property
    def micro_batch_size(self) -> int:
        ld = self.loader
        return micro_batch_size(ld.tokens_per_step, ld.world_size, ld.grad_accum, self.seq_len)

    # -- batches -------------------------------------------------------------------------
    def next_step(self) -> list[dict]:
        """The next step's micro-batches (pinned when ``pin``); ``StopIteration`` on every rank when
        any rank's data ends. Collective, like ``TrainLoader.next_step``."""
        if self._exhausted:
            all_ranks_agree(False)  # every rank still takes part in the collective
            raise StopIteration(self.loader.exhausted_message(self.step))
        self._start()
        ok, batches, state, rows, error = self._queue.get()
        if error is not None:
            raise error
        if not all_ranks_agree(ok):
            self._exhausted = True
            self.close()
            raise StopIteration(self.loader.exhausted_message(self.step))
        self._state, self.tokens_seen, self.step = state, state["tokens_seen"], state["step"]
        self.last_rows = rows
        return batches

    def _start(self) -> None:
        if self._thread is not None:
            return
        self._state = copy.deepcopy(self.loader.state_dict())  # taken before the thread touches the loader
        self._stop.clear()
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._work, name="scaleout-prefetch", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        """Background thread: fill, cut, pin, snapshot; one item per step until data ends or ``close``."""
        while not self._stop.is_set():
            try:
                ok = self.loader.fill_step()
                batches = self.loader.cut_step() if ok else None
                if batches is not None and self.pin:
                    batches = [{k: v.pin_memory() for k, v in b.items()} for b in batches]
                item = (ok, batches, copy.deepcopy(self.loader.state_dict()) if ok else None,
                        list(self.loader.last_rows), None)
            except BaseException as e:  # surfaced on the main thread by next_step
                item, ok = (False, None, None, [], e), False
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if not ok:
                return

    def close(self) -> None:
        """Stop the thread (the prepared step is dropped; ``state_dict`` is unaffected)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    # -- resume --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The consumed position: what ``TrainLoader.state_dict()`` gives without prefetching."""
        return self._state if self._thread is not None or self._state is not None else self.loader.state_dict()

    def load_state_dict(self, sd: dict) -> None:
        self.close()
        self.loader.load_state_dict(sd)
        self._state, self._exhausted = None, False
        self.tokens_seen, self.step = self.loader.tokens_seen, self.loader.step
