"""Packing: documents -> one continuous token stream -> fixed-length blocks; the document shuffle buffer.

The token stream of a rank is ``doc_1 + [EOS] + doc_2 + [EOS] + ...``. Blocks are cut from
its front at whatever length the current curriculum phase asks for; whatever is left over
stays at the front for the next step, so a phase change only changes where the next cut
falls -- no token is dropped or repeated (unlike ``group_texts``, which drops each
batch's remainder).

Labels are the block itself: Hugging Face causal LMs shift labels inside the model, so
``model(input_ids=x, labels=x)`` is the next-token loss over the packed block (L-1
predictions per row). Attention crosses document boundaries; the EOS between documents
tells the model where one ends.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def join_documents(token_lists, eos_id: int) -> np.ndarray:
    """``[[1, 2], [3]]`` -> ``[1, 2, EOS, 3, EOS]`` as int64."""
    sizes = [len(t) + 1 for t in token_lists]
    out = np.empty(sum(sizes), dtype=np.int64)
    pos = 0
    for ids, n in zip(token_lists, sizes):
        out[pos:pos + n - 1] = ids
        out[pos + n - 1] = eos_id
        pos += n
    return out


def cut_blocks(stream: np.ndarray, n_rows: int, seq_len: int) -> tuple[torch.Tensor, np.ndarray]:
    """Take ``n_rows * seq_len`` tokens from the front as an ``[n_rows, seq_len]`` tensor; return the rest."""
    need = n_rows * seq_len
    assert len(stream) >= need, (len(stream), need)
    block = torch.from_numpy(np.ascontiguousarray(stream[:need])).view(n_rows, seq_len)
    return block, stream[need:]


def micro_batches(block: torch.Tensor, grad_accum: int) -> list[dict]:
    """Split ``[grad_accum * mb, L]`` rows into ``grad_accum`` dicts ready for ``model(**batch)``."""
    return [{"input_ids": x, "labels": x.clone()} for x in block.chunk(grad_accum)]


class DocShuffler:
    """A seeded document shuffle buffer whose whole state (contents + RNG) is checkpointable.

    ``datasets``' own buffer (``IterableDataset.shuffle``) is not saved by ``state_dict()``:
    on resume it is refilled from the source position, so the documents that sat in it
    are lost and the order differs. This one is saved with the loader, so resume is exact.

        >>> sh = DocShuffler(capacity=256, seed="0:rank1")
        >>> out = sh.push(doc)        # None while filling, then one random earlier document
        >>> rest = list(sh.drain())   # at the end of the source
    """

    def __init__(self, capacity: int, seed: str):
        self.capacity = capacity
        self.buffer: list[str] = []
        self.rng = random.Random(seed)

    def push(self, doc: str) -> str | None:
        if self.capacity == 0:
            return doc
        if len(self.buffer) < self.capacity:
            self.buffer.append(doc)
            return None
        j = self.rng.randrange(self.capacity)
        out, self.buffer[j] = self.buffer[j], doc
        return out

    def pop(self) -> str | None:
        """One random buffered document (swap-remove), or None when empty."""
        if not self.buffer:
            return None
        j = self.rng.randrange(len(self.buffer))
        self.buffer[j], self.buffer[-1] = self.buffer[-1], self.buffer[j]
        return self.buffer.pop()

    def drain(self):
        while (doc := self.pop()) is not None:
            yield doc

    def state_dict(self) -> dict:
        return {"buffer": list(self.buffer), "rng": self.rng.getstate()}

    def load_state_dict(self, sd: dict) -> None:
        self.buffer = list(sd["buffer"])
        version, internal, gauss = sd["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
